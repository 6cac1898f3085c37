use serde_json::{Value, json};

use super::*;
use crate::consent::{Access, CPR_SYSTEM, Emergency, blocks_in, denies};

/// 2026-12-03T12:00:00Z.
const NOW: i64 = 1_796_299_200;

fn request(provision: Value) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "patient": { "reference": "Patient/pat-anne" },
        "provision": provision,
        "extension": [{
            "url": SOURCE_EXTENSION,
            "valueReference": { "reference": "AuditEvent/ev-1" }
        }]
    })
}

fn nurse_request() -> Value {
    request(json!({
        "type": "deny",
        "actor": [{ "reference": { "reference": "Practitioner/prac-nurse-5166" } }]
    }))
}

/// An AuditEvent of Anne's log: the nurse Lise Holm (by fhirUser and authorisation id) for her
/// hospital (SOR), through a client system, recorded by the gateway.
fn event() -> Value {
    json!({
        "resourceType": "AuditEvent", "id": "ev-1",
        "agent": [
            { "type": { "coding": [{ "code": "110153" }] }, "who": { "display": "EPJ" } },
            { "type": { "coding": [{ "code": "110152" }] }, "who": { "display": "Portvagt" } },
            {
                "type": { "coding": [{ "code": "humanuser" }] },
                "who": {
                    "identifier": { "system": "https://idp", "value": "0101901234" },
                    "reference": "Practitioner/prac-nurse-5166",
                    "display": "0101901234"
                },
                "name": "Lise Holm",
                "extension": [{
                    "url": "https://profiles.ihe.net/ITI/BALP/StructureDefinition/ihe-otherId",
                    "valueIdentifier": { "system": AUTHORIZATION_SYSTEM, "value": "ZK482" }
                }]
            },
            {
                "type": { "coding": [{ "code": "PROV" }] },
                "who": {
                    "identifier": { "system": SOR_SYSTEM, "value": "123456789012345" },
                    "display": "Rigshospitalet"
                }
            }
        ],
        "entity": [{ "what": { "reference": "Patient/pat-anne" }, "role": { "code": "1" } }]
    })
}

#[test]
fn the_one_shape_is_read() {
    let asked = read_request(&nurse_request(), "pat-anne", NOW).unwrap();
    assert_eq!(
        asked,
        BlockRequest {
            actor: Actor::Reference("Practitioner/prac-nurse-5166".into()),
            event: "ev-1".into(),
            period: None,
        }
    );
    let by_identifier = request(json!({
        "type": "deny",
        "actor": [{
            "role": { "coding": [{ "system": PARTICIPATION, "code": "PRCP" }] },
            "reference": { "identifier": { "system": SOR_SYSTEM, "value": "123456789012345" } }
        }],
        "period": { "end": "2027-06-01" }
    }));
    let asked = read_request(&by_identifier, "pat-anne", NOW).unwrap();
    assert_eq!(
        asked.actor,
        Actor::Identifier(SOR_SYSTEM.into(), "123456789012345".into())
    );
    assert_eq!(asked.period, Some((None, Some("2027-06-01".into()))));
}

#[test]
fn every_other_shape_is_refused() {
    let refused = |body: Value| read_request(&body, "pat-anne", NOW).unwrap_err();
    // Another patient's record.
    let mut bo = nurse_request();
    bo["patient"]["reference"] = json!("Patient/pat-bo");
    assert!(matches!(refused(bo), BlockRefusal::Refused(_)));
    for spelling in [
        "Patient/pat-anne/_history/1",
        "https://fhir/Patient/pat-anne",
        "Patient/pat-ann",
    ] {
        let mut other = nurse_request();
        other["patient"]["reference"] = json!(spelling);
        assert!(
            matches!(refused(other), BlockRefusal::Refused(_)),
            "{spelling}"
        );
    }
    let shapes = [
        // A permit, or no type.
        request(
            json!({ "type": "permit", "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
        request(json!({ "actor": [{ "reference": { "reference": "Practitioner/x" } }] })),
        // No actor, two actors, an actor nobody can be blocked as.
        request(json!({ "type": "deny" })),
        request(json!({ "type": "deny", "actor": [
            { "reference": { "reference": "Practitioner/x" } },
            { "reference": { "reference": "Practitioner/y" } }
        ] })),
        request(
            json!({ "type": "deny", "actor": [{ "reference": { "reference": "Patient/pat-bo" } }] }),
        ),
        request(
            json!({ "type": "deny", "actor": [{ "reference": { "reference": "https://x/Practitioner/x" } }] }),
        ),
        request(
            json!({ "type": "deny", "actor": [{ "reference": { "reference": "Practitioner/x/_history/1" } }] }),
        ),
        request(
            json!({ "type": "deny", "actor": [{ "reference": { "identifier": { "system": CPR_SYSTEM, "value": "1111111118" } } }] }),
        ),
        request(
            json!({ "type": "deny", "actor": [{ "reference": { "identifier": { "system": AUTHORIZATION_SYSTEM, "value": "ZK482,XY1" } } }] }),
        ),
        // Narrower or wider provisions: a class, nested exceptions, data, purpose.
        request(
            json!({ "type": "deny", "class": [{ "code": "Observation" }], "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
        request(
            json!({ "type": "deny", "provision": [{ "type": "permit" }], "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
        // A role other than PRCP.
        request(
            json!({ "type": "deny", "actor": [{ "role": { "coding": [{ "system": PARTICIPATION, "code": "AUT" }] }, "reference": { "reference": "Practitioner/x" } }] }),
        ),
        // Periods that are over, backwards, unreadable or empty.
        request(
            json!({ "type": "deny", "period": { "end": "2020-01-01" }, "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
        request(
            json!({ "type": "deny", "period": { "start": "2028-01-01", "end": "2027-01-01" }, "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
        request(
            json!({ "type": "deny", "period": { "end": "soon" }, "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
        request(
            json!({ "type": "deny", "period": {}, "actor": [{ "reference": { "reference": "Practitioner/x" } }] }),
        ),
    ];
    for body in shapes {
        assert!(
            matches!(refused(body.clone()), BlockRefusal::Shape(_)),
            "{body}"
        );
    }
    // Other top-level shapes: more fields, another status, no or another source.
    let mut more = nurse_request();
    more["policyRule"] = json!({ "coding": [{ "code": "OPTOUT" }] });
    assert!(matches!(refused(more), BlockRefusal::Shape(_)));
    let mut draft = nurse_request();
    draft["status"] = json!("draft");
    assert!(matches!(refused(draft), BlockRefusal::Shape(_)));
    let mut sourceless = nurse_request();
    sourceless.as_object_mut().unwrap().remove("extension");
    assert!(matches!(refused(sourceless), BlockRefusal::Shape(_)));
    let mut elsewhere = nurse_request();
    elsewhere["extension"][0]["valueReference"]["reference"] = json!("Consent/c1");
    assert!(matches!(refused(elsewhere), BlockRefusal::Shape(_)));
    let mut not_consent = nurse_request();
    not_consent["resourceType"] = json!("Contract");
    assert!(matches!(refused(not_consent), BlockRefusal::Shape(_)));
}

#[test]
fn an_event_lets_her_block_the_user_and_their_organisation_only() {
    let actors = actors_in_event(&event());
    let names: Vec<(&Actor, Option<&str>)> = actors
        .iter()
        .map(|a| (&a.actor, a.display.as_deref()))
        .collect();
    assert_eq!(
        names,
        vec![
            (
                &Actor::Reference("Practitioner/prac-nurse-5166".into()),
                Some("Lise Holm")
            ),
            (
                &Actor::Identifier(AUTHORIZATION_SYSTEM.into(), "ZK482".into()),
                Some("Lise Holm")
            ),
            (
                &Actor::Identifier(SOR_SYSTEM.into(), "123456789012345".into()),
                Some("Rigshospitalet")
            ),
        ]
    );
    // The identity provider's subject (a CPR number here) is never an actor, nor is the
    // client system, nor a user who is a Patient (herself, or a guardian).
    // A fhirUser into another server is not blocked by its id here (a Practitioner of this
    // server may have the same id); her authorisation id still is. An organisation by CVR
    // number (what a client certificate names) is not offered at all.
    let mut elsewhere = event();
    elsewhere["agent"][2]["who"]["reference"] =
        json!("https://idp.example.dk/fhir/Practitioner/prac-nurse-5166");
    elsewhere["agent"][3]["who"]["identifier"]["system"] = json!("http://cvr.dk");
    let offered: Vec<Actor> = actors_in_event(&elsewhere)
        .into_iter()
        .map(|a| a.actor)
        .collect();
    assert_eq!(
        offered,
        vec![Actor::Identifier(
            AUTHORIZATION_SYSTEM.into(),
            "ZK482".into()
        )]
    );
    let mut own = event();
    own["agent"][2]["who"]["reference"] = json!("Patient/pat-anne");
    own["agent"][2]["extension"] = json!([]);
    own["agent"].as_array_mut().unwrap().truncate(3);
    assert!(actors_in_event(&own).is_empty());
    assert!(
        matching_actor(
            &actors,
            &Actor::Identifier(CPR_SYSTEM.into(), "0101901234".into())
        )
        .is_none()
    );
    assert!(matching_actor(&actors, &Actor::Reference("Practitioner/prac-ns363".into())).is_none());
    // Matched as consent matches callers: an authorisation id in any case.
    let matched = matching_actor(
        &actors,
        &Actor::Identifier(AUTHORIZATION_SYSTEM.into(), "zk482".into()),
    )
    .unwrap();
    assert_eq!(
        matched.actor,
        Actor::Identifier(AUTHORIZATION_SYSTEM.into(), "ZK482".into())
    );
}

#[test]
fn the_built_consent_blocks_whom_it_names_and_nobody_else() {
    let actors = actors_in_event(&event());
    let asked = read_request(&nurse_request(), "pat-anne", NOW).unwrap();
    let actor = matching_actor(&actors, &asked.actor).unwrap();
    let mut consent = build("pat-anne", &actor, &asked, "2026-12-03T12:00:00Z");
    consent["id"] = json!("blk-1");
    assert!(is_citizen_block(&consent, "pat-anne"));
    assert!(!is_citizen_block(&consent, "pat-bo"));
    assert_eq!(blocked_display(&consent), Some("Lise Holm"));
    assert_eq!(blocked_actor(&consent), Some(actor.actor.clone()));
    let block = blocks_in(&consent).expect("a block the consent check reads");
    let access = Access {
        resource_type: Some("Observation"),
        resource: Some("Observation/o1"),
        purpose: Some("TREATMENT"),
        now: NOW,
        unknown_denies: false,
    };
    let nurse = CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), "ZK482".into())],
        references: vec!["Practitioner/prac-nurse-5166".into()],
    };
    let colleague = CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), "NS363".into())],
        references: vec!["Practitioner/prac-ns363".into()],
    };
    assert!(denies(&block, &nurse, &access));
    assert!(!denies(&block, &colleague, &access));
    assert_eq!(
        crate::consent::check(
            std::slice::from_ref(&block),
            &nurse,
            &access,
            Emergency::WithReason("hjertestop")
        ),
        crate::consent::ConsentVerdict::BrokenGlass {
            consent: "blk-1".into()
        }
    );
    // With a period: in force within it only.
    let mut timed = read_request(&nurse_request(), "pat-anne", NOW).unwrap();
    timed.period = Some((None, Some("2027-01-01".into())));
    let block = blocks_in(&build("pat-anne", &actor, &timed, "2026-12-03T12:00:00Z")).unwrap();
    assert!(denies(&block, &nurse, &access));
    let later = Access {
        now: NOW + 60 * 86_400,
        ..access
    };
    assert!(!denies(&block, &nurse, &later));
    // Read back, it is her block; changed in any way (or only tagged), it is not.
    let made = read_block(&consent, "pat-anne").expect("her block, read back");
    assert!(made.active && made.in_force(NOW) && made.period.is_none());
    assert_eq!(made.actor, actor.actor);
    let mut lifted = consent.clone();
    lifted["status"] = json!("inactive");
    assert!(!read_block(&lifted, "pat-anne").unwrap().in_force(NOW));
    let mut served = consent.clone();
    served["meta"]["versionId"] = json!("3");
    served["text"] = json!({ "status": "generated", "div": "<div>Spærring</div>" });
    assert!(read_block(&served, "pat-anne").is_some());
    let timed_block = read_block(
        &build("pat-anne", &actor, &timed, "2026-12-03T12:00:00Z"),
        "pat-anne",
    )
    .unwrap();
    assert!(timed_block.in_force(NOW) && !timed_block.in_force(NOW + 60 * 86_400));
    for (pointer, value) in [
        ("/provision/type", json!("permit")),
        ("/provision/class", json!([{ "code": "Observation" }])),
        (
            "/provision/actor/1",
            json!({ "reference": { "reference": "Practitioner/x" } }),
        ),
        ("/policyRule/coding/0/code", json!("OPTOUT")),
        ("/patient/reference", json!("Patient/pat-bo")),
        ("/note", json!("x")),
    ] {
        let mut changed = consent.clone();
        match changed.pointer_mut(pointer) {
            Some(slot) => *slot = value,
            None => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                let parent = changed.pointer_mut(parent).unwrap();
                match parent {
                    Value::Array(items) => items.push(value),
                    Value::Object(fields) => {
                        fields.insert(key.into(), value);
                    }
                    _ => unreachable!(),
                }
            }
        }
        assert!(read_block(&changed, "pat-anne").is_none(), "{pointer}");
    }
    // What the gateway writes is a request it would take again.
    let mut again = build("pat-anne", &actor, &asked, "2026-12-03T12:00:00Z");
    for key in ["meta", "scope", "category", "dateTime", "policyRule"] {
        again.as_object_mut().unwrap().remove(key);
    }
    again["provision"]["actor"][0]["reference"]
        .as_object_mut()
        .unwrap()
        .remove("display");
    assert_eq!(read_request(&again, "pat-anne", NOW).unwrap(), asked);
}

#[test]
fn only_setting_it_inactive_lifts_a_block() {
    assert_eq!(
        read_withdrawal(&json!([{ "op": "replace", "path": "/status", "value": "inactive" }])),
        Ok(())
    );
    for patch in [
        json!([{ "op": "replace", "path": "/status", "value": "active" }]),
        json!([{ "op": "replace", "path": "/status", "value": "inactive", "from": "/x" }]),
        json!([{ "op": "remove", "path": "/provision" }]),
        json!([
            { "op": "replace", "path": "/status", "value": "inactive" },
            { "op": "replace", "path": "/patient/reference", "value": "Patient/pat-bo" }
        ]),
        json!({ "op": "replace", "path": "/status", "value": "inactive" }),
        json!([]),
    ] {
        assert!(read_withdrawal(&patch).is_err(), "{patch}");
    }
}
