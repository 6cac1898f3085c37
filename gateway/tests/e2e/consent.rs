//! Negative consent and break-the-glass end to end: a citizen's `Consent` blocks in the
//! backend, enforced on reads, searches, batches and `$everything`; an emergency access with a
//! reason gets past a block (and only a block), audited and counted. Each test has its own
//! backend, so the blocks stay out of other tests.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use portvagt::demo::BackendProcess;
use serde_json::json;

use crate::support::{
    Answer, Gateway, Options, backend_exchange, backend_send, json_patch, metric_value, request,
    send_batch,
};

const AUTHORIZATION: &str = "https://autregweb.sst.dk";

/// A seeded backend of its own where Anne has blocked the physician with authorisation NS363.
async fn backend_with_block() -> BackendProcess {
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let consent = json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": "Patient/pat-anne" },
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT" }] },
        "provision": {
            "type": "deny",
            "actor": [{
                "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP" }] },
                "reference": { "identifier": { "system": AUTHORIZATION, "value": "NS363" } }
            }]
        }
    });
    let created = backend_send(backend.base_url(), Method::POST, "Consent", Some(consent)).await;
    assert_eq!(created["resourceType"], "Consent", "{created}");
    backend
}

fn gateway(backend: &BackendProcess) -> Gateway {
    Gateway::start_with(Options {
        backend_url: Some(backend.base_url().to_owned()),
        extra_config: "[consent]\ncache_ttl = \"1s\"\n".into(),
        ..Options::default()
    })
}

fn physician(gateway: &Gateway, authorization: &str, purpose: &str, scope: &str) -> String {
    gateway.token(json!({
        "scope": scope, "authorization_id": authorization, "purpose_of_use": purpose,
        "role": "7170", "name": "Mette Kjær",
    }))
}

fn denial(answer: &Answer) -> (u16, String) {
    (answer.status.as_u16(), answer.detail_code())
}

/// Tokens for the physician Anne blocked (NS363) and a colleague she did not (XY123), both
/// treating, with `scope`.
fn blocked_and_colleague(gateway: &Gateway, scope: &str) -> (String, String) {
    (
        physician(gateway, "NS363", "TREATMENT", scope),
        physician(gateway, "XY123", "TREATMENT", scope),
    )
}

/// Anne's CPR number as an Identifier.
fn anne_cpr() -> serde_json::Value {
    json!({ "system": "urn:oid:1.2.208.176.1.2", "value": "1111111118" })
}

/// The ids of a searchset's resources, sorted.
fn entry_ids(answer: &Answer) -> Vec<String> {
    let mut ids: Vec<String> = answer.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The audit events of the access `answer` answered, as text.
fn recorded(gateway: &Gateway, answer: &Answer) -> String {
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    serde_json::to_string(&gateway.audit_events_for(request_id)).unwrap()
}

/// `body` stored straight in the backend at `base`: its `Type/id`.
async fn store(base: &str, body: serde_json::Value) -> String {
    let kind = body["resourceType"].as_str().unwrap().to_owned();
    let created = backend_send(base, Method::POST, &kind, Some(body)).await;
    format!("{kind}/{}", created["id"].as_str().unwrap())
}

#[tokio::test]
async fn a_block_holds_on_reads_searches_batches_and_everything() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.rs");

    for path in [
        "/fhir/Patient/pat-anne",
        "/fhir/Observation?patient=pat-anne",
        "/fhir/Patient/pat-anne/$everything",
    ] {
        let answer = client.get(path, Some(&blocked)).await.unwrap();
        assert_eq!(denial(&answer), (403, "consent-block".into()), "{path}");
        let allowed = client.get(path, Some(&colleague)).await.unwrap();
        assert_eq!(allowed.status, 200, "{path}: {}", allowed.text());
    }

    // A read that names no patient in its URL is checked on its answer, and answered as if
    // the resource did not exist: the caller did not ask for Anne, so learns nothing of her.
    let anne_observations = backend_send(
        backend.base_url(),
        Method::GET,
        "Observation?patient=pat-anne",
        None,
    )
    .await;
    let observation = anne_observations["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = client
        .get(&format!("/fhir/Observation/{observation}"), Some(&blocked))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (404, "not-found".into()));

    // A search across patients: Anne's entries withheld, without a trace (no notice, no total).
    let answer = client
        .get("/fhir/Observation?_count=100", Some(&blocked))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let entries = answer.json()["entry"].as_array().unwrap().clone();
    let subjects: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["resource"]["subject"]["reference"].as_str())
        .collect();
    assert!(!subjects.is_empty());
    assert!(!subjects.contains(&"Patient/pat-anne"), "{subjects:?}");
    assert!(
        entries.iter().all(|e| e["search"]["mode"] != "outcome"),
        "{entries:?}"
    );
    assert!(answer.json().get("total").is_none());

    // A batch: entry by entry.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/pat-anne" } },
        { "request": { "method": "GET", "url": "Patient/pat-bo" } }
    ]});
    let answer = send_batch(&client, &blocked, batch).await;
    let body = answer.json();
    assert_eq!(body["entry"][0]["response"]["status"], "403 Forbidden");
    assert!(
        body["entry"][1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200")
    );
    assert_eq!(body["entry"][1]["resource"]["id"], "pat-bo");

    // Writes by id are checked against the target's owner before they happen; as they did
    // not name Anne, they are answered as if there were nothing there.
    let anne_condition = "/fhir/Condition/cond-anne-1";
    let writer = physician(&gateway, "NS363", "TREATMENT", "user/*.cruds");
    let delete = client
        .send(request(Method::DELETE, anne_condition, Some(&writer), None))
        .await
        .unwrap();
    assert_eq!(denial(&delete), (404, "not-found".into()));
    let patch = client
        .send(json_patch(
            anne_condition,
            &writer,
            r#"[{"op":"replace","path":"/clinicalStatus/text","value":"x"}]"#,
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(denial(&patch), (404, "not-found".into()));
    let still_there = backend_send(
        backend.base_url(),
        Method::GET,
        "Condition/cond-anne-1",
        None,
    )
    .await;
    assert_eq!(still_there["id"], "cond-anne-1");
    // A conditional write is checked against what its criteria find.
    let conditional = client
        .send(request(
            Method::DELETE,
            "/fhir/Condition?_id=cond-anne-1",
            Some(&writer),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(denial(&conditional), (404, "not-found".into()));
    // Not even the block itself can be removed by the one it blocks.
    let consents = backend_send(
        backend.base_url(),
        Method::GET,
        "Consent?patient=pat-anne",
        None,
    )
    .await;
    let consent_id = consents["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let unblock = client
        .send(request(
            Method::DELETE,
            &format!("/fhir/Consent/{consent_id}"),
            Some(&writer),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(denial(&unblock), (404, "not-found".into()));

    // A search inside a batch: the nested answer is checked too.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation?code=85354-9" } }
    ]});
    let answer = send_batch(&client, &blocked, batch).await;
    assert!(
        !answer.text().contains("Patient/pat-anne"),
        "{}",
        answer.text()
    );

    // HEAD tells nothing either.
    let head = client
        .send(request(
            Method::HEAD,
            &format!("/fhir/Observation/{observation}"),
            Some(&blocked),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(head.status, 404);

    // Anne herself is not blocked by her block.
    let anne = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-anne" }));
    let own = client
        .get("/fhir/Patient/pat-anne", Some(&anne))
        .await
        .unwrap();
    assert_eq!(own.status, 200);

    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert!(
        metric_value(&metrics, "portvagt_consent_withheld_entries_total").unwrap() >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn breaking_the_glass_needs_a_reason_lifts_only_the_block_and_is_audited() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let emergency = physician(&gateway, "NS363", "EMERGENCY", "user/*.rs");
    let get = |path: &str, token: &str, reason: Option<&str>| {
        let mut builder = Request::get(path)
            .header("accept", "application/fhir+json")
            .header("authorization", format!("Bearer {token}"));
        if let Some(reason) = reason {
            builder = builder.header("x-portvagt-break-glass-reason", reason);
        }
        builder.body(Full::new(Bytes::new())).unwrap()
    };

    let without = client
        .send(get("/fhir/Patient/pat-anne", &emergency, None))
        .await
        .unwrap();
    assert_eq!(
        denial(&without),
        (403, "break-glass-reason-required".into())
    );
    // Zero-width and other invisible characters, or too few letters, are no reason.
    for unreadable in [
        "\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}",
        "\u{2060}\u{FEFF}\u{3164}\u{3164}\u{3164}\u{3164}",
        "...",
        "ok",
    ] {
        let answer = client
            .send(get("/fhir/Patient/pat-anne", &emergency, Some(unreadable)))
            .await
            .unwrap();
        assert_eq!(
            denial(&answer),
            (403, "break-glass-reason-required".into()),
            "{unreadable:?}"
        );
    }
    // An unreadable header does not hide the token's readable reason.
    let claimed = gateway.token(json!({
        "scope": "user/*.rs", "authorization_id": "NS363", "purpose_of_use": "EMERGENCY",
        "role": "7170", "name": "Mette Kjær", "break_glass_reason": "bevidstløs",
    }));
    let answer = client
        .send(get("/fhir/Patient/pat-anne", &claimed, Some("...")))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());

    let reason = "unconscious in the emergency room, no relatives reachable";
    let with = client
        .send(get("/fhir/Patient/pat-anne", &emergency, Some(reason)))
        .await
        .unwrap();
    assert_eq!(with.status, 200, "{}", with.text());
    let request_id = with.headers["x-request-id"].to_str().unwrap();
    let events = gateway.audit_events_for(request_id);
    assert_eq!(events.len(), 1);
    let purposes: Vec<&str> = events[0]["purposeOfEvent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(purposes, vec!["ETREAT", "BTG"]);
    let patient = &events[0]["entity"][0];
    assert_eq!(patient["what"]["reference"], "Patient/pat-anne");
    assert_eq!(patient["detail"][0]["type"], "break-glass-reason");
    assert_eq!(patient["detail"][0]["valueString"], reason);

    // Never past a scope: no Patient scope, no Patient, emergency or not.
    let narrow = physician(&gateway, "NS363", "EMERGENCY", "user/Observation.rs");
    let answer = client
        .send(get("/fhir/Patient/pat-anne", &narrow, Some(reason)))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "insufficient-scope".into()));

    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_break_glass_total"),
        Some(2.0)
    );
}

#[tokio::test]
async fn an_operation_on_a_blocked_patients_resource_is_withheld_and_audited_like_a_read() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.rs");
    // `$meta` answers with labels and versions, not the resource: the instance is read first,
    // so the block holds as it does on a read of it, in the same words.
    let read = client
        .get("/fhir/Observation/obs-anne-bp", Some(&blocked))
        .await
        .unwrap();
    let meta = client
        .get("/fhir/Observation/obs-anne-bp/$meta", Some(&blocked))
        .await
        .unwrap();
    assert_eq!(meta.status, read.status, "{}", meta.text());
    assert_eq!(meta.status, 404, "{}", meta.text());
    // ... in the same words as an instance that is not there: nothing tells them apart.
    let missing = client
        .get(
            "/fhir/Observation/no-such-observation/$meta",
            Some(&blocked),
        )
        .await
        .unwrap();
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(missing.detail_code(), meta.detail_code());
    let allowed = client
        .get("/fhir/Observation/obs-anne-bp/$meta", Some(&colleague))
        .await
        .unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    // The colleague's access is in Anne's log.
    let events = recorded(&gateway, &allowed);
    assert!(events.contains("Patient/pat-anne"), "{events}");
}

/// A write that names its patient by identifier only (her CPR number, typed `Patient`, or
/// untyped as the subject) touches her as much as one by id: the blocked professional is
/// refused, a colleague's write is recorded as hers.
#[tokio::test]
async fn a_write_naming_the_patient_by_identifier_only_meets_her_block() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.cruds");
    let anne = anne_cpr();
    for subject in [
        json!({ "type": "Patient", "identifier": anne }),
        json!({ "identifier": anne }),
    ] {
        let observation = json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "by identifier" }, "subject": subject });
        let refused = client
            .send(crate::support::request(
                Method::POST,
                "/fhir/Observation",
                Some(&blocked),
                Some(observation.clone()),
            ))
            .await
            .unwrap();
        assert_eq!(denial(&refused), (403, "consent-block".into()), "{subject}");
        let written = client
            .send(crate::support::request(
                Method::POST,
                "/fhir/Observation",
                Some(&colleague),
                Some(observation),
            ))
            .await
            .unwrap();
        assert_eq!(written.status, 201, "{subject}: {}", written.text());
        let request_id = written.headers["x-request-id"].to_str().unwrap();
        let events = gateway.audit_events_for(request_id);
        assert!(
            events
                .iter()
                .any(|event| event["entity"][0]["what"]["reference"] == "Patient/pat-anne"),
            "{subject}: {events:?}"
        );
    }
}

/// Records stored with their patient named by identifier only (her CPR number on `subject`,
/// typed `Patient` or not) are hers when they are read, searched, changed or deleted as much
/// as when they are written: the gateway looks the identifiers up, the blocked professional
/// does not see them, and a colleague's access is recorded as an access to Anne. A record whose
/// identifier cannot be looked up (no system) is withheld from everyone consent binds, and no
/// write may change it.
#[tokio::test]
async fn records_naming_the_patient_by_identifier_only_are_hers_when_read_and_changed() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.cruds");
    let cpr = |value: &str| json!({ "system": "urn:oid:1.2.208.176.1.2", "value": value });
    let stored = |subject: serde_json::Value, code: &'static str| {
        let observation = json!({ "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "urn:portvagt:test", "code": code }] },
            "subject": subject });
        let base = backend.base_url().to_owned();
        async move {
            let stored = store(&base, observation).await;
            stored.trim_start_matches("Observation/").to_owned()
        }
    };
    let anne_typed = stored(
        json!({ "type": "Patient", "identifier": cpr("1111111118") }),
        "by-cpr",
    )
    .await;
    let anne_untyped = stored(json!({ "identifier": cpr("1111111118") }), "by-cpr").await;
    let bo = stored(json!({ "identifier": cpr("0501792275") }), "by-cpr").await;
    let nobody_knows = stored(
        json!({ "identifier": { "value": "1111111118" } }),
        "no-system",
    )
    .await;

    // Read by id: Anne's is not there for the professional she blocked (he did not ask for
    // her by name), Bo's is; the colleague reads hers, recorded as an access to Anne.
    for id in [&anne_typed, &anne_untyped] {
        let path = format!("/fhir/Observation/{id}");
        let answer = client.get(&path, Some(&blocked)).await.unwrap();
        assert_eq!(answer.status, 404, "{path}: {}", answer.text());
        let read = client.get(&path, Some(&colleague)).await.unwrap();
        assert_eq!(read.status, 200, "{path}: {}", read.text());
        let events = recorded(&gateway, &read);
        assert!(events.contains("Patient/pat-anne"), "{path}: {events}");
    }
    let answer = client
        .get(&format!("/fhir/Observation/{bo}"), Some(&blocked))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Bo's CPR number was placed a moment ago: read again, it is not searched again.
    let lookups = |source: &'static str| {
        let client = &client;
        async move {
            let metrics = client.get("/metrics", None).await.unwrap().text();
            metric_value(
                &metrics,
                &format!("portvagt_identifier_lookups_total{{source=\"{source}\"}}"),
            )
            .unwrap()
        }
    };
    let (searched, cached) = (lookups("searched").await, lookups("cache").await);
    let again = client
        .get(&format!("/fhir/Observation/{bo}"), Some(&colleague))
        .await
        .unwrap();
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(recorded(&gateway, &again).contains("Patient/pat-bo"));
    assert_eq!(lookups("searched").await, searched);
    assert_eq!(lookups("cache").await, cached + 1.0);

    // A search: Anne's entries are left out for him, Bo's stay; the colleague sees all three.
    let search = "/fhir/Observation?code=urn:portvagt:test%7Cby-cpr";
    let his = client.get(search, Some(&blocked)).await.unwrap();
    assert_eq!(his.status, 200, "{}", his.text());
    assert_eq!(entry_ids(&his), std::slice::from_ref(&bo));
    let theirs = client.get(search, Some(&colleague)).await.unwrap();
    let mut all = vec![anne_typed.clone(), anne_untyped.clone(), bo.clone()];
    all.sort();
    assert_eq!(entry_ids(&theirs), all);
    let events = recorded(&gateway, &theirs);
    assert!(
        events.contains("Patient/pat-anne") && events.contains("Patient/pat-bo"),
        "{events}"
    );

    // In a batch: his read entry of Anne's record is not there.
    let batch = send_batch(
        &client,
        &blocked,
        json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": format!("Observation/{anne_untyped}") } },
            { "request": { "method": "GET", "url": format!("Observation/{bo}") } }
        ]}),
    )
    .await;
    let entries = batch.json()["entry"].clone();
    assert_eq!(
        entries[0]["response"]["status"], "404 Not Found",
        "{entries}"
    );
    assert!(entries[0].get("resource").is_none(), "{entries}");
    assert!(
        entries[1]["response"]["status"]
            .as_str()
            .is_some_and(|status| status.starts_with("200")),
        "{entries}"
    );

    // Changing Anne's record into Bo's, or deleting it: refused to him, as if not there.
    let moved = json!({ "resourceType": "Observation", "id": anne_typed, "status": "final",
        "code": { "text": "moved" }, "subject": { "reference": "Patient/pat-bo" } });
    let update = client
        .send(request(
            Method::PUT,
            &format!("/fhir/Observation/{anne_typed}"),
            Some(&blocked),
            Some(moved),
        ))
        .await
        .unwrap();
    assert_eq!(update.status, 404, "{}", update.text());
    let delete = client
        .send(request(
            Method::DELETE,
            &format!("/fhir/Observation/{anne_untyped}"),
            Some(&blocked),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(delete.status, 404, "{}", delete.text());
    for id in [&anne_typed, &anne_untyped] {
        let (status, kept) = backend_exchange(
            backend.base_url(),
            Method::GET,
            &format!("Observation/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{kept}");
        assert!(kept["subject"].get("identifier").is_some(), "{kept}");
    }

    // An identifier without a system: whose it is cannot be looked up. Withheld from every
    // caller consent binds, and no write may change it.
    let path = format!("/fhir/Observation/{nobody_knows}");
    for token in [&blocked, &colleague] {
        let answer = client.get(&path, Some(token)).await.unwrap();
        assert_eq!(answer.status, 404, "{}", answer.text());
    }
    let delete = client
        .send(request(Method::DELETE, &path, Some(&colleague), None))
        .await
        .unwrap();
    assert_eq!(
        denial(&delete),
        (403, "write-not-verifiable".into()),
        "{}",
        delete.text()
    );
}

/// The other ways a write can put data into Anne's record without her id: a contained Patient
/// carrying her CPR number, a Coverage whose beneficiary is her by CPR, and a patch whose
/// result names her, however it is assembled. Each meets her block; a FHIRPath Patch that can
/// change whose record it is cannot be checked and is refused to everyone.
#[tokio::test]
async fn a_write_naming_her_by_a_contained_patient_or_a_patched_identifier_meets_her_block() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.cruds");
    let cpr = anne_cpr();
    let send = |method: Method, path: String, token: &str, body: serde_json::Value| {
        client.send(match method {
            Method::PATCH => json_patch(&path, token, &body.to_string(), &[]),
            _ => request(method, &path, Some(token), Some(body)),
        })
    };

    for body in [
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "contained" },
            "contained": [{ "resourceType": "Patient", "id": "p1", "identifier": [cpr] }],
            "subject": { "reference": "#p1" } }),
        json!({ "resourceType": "Coverage", "status": "active",
            "beneficiary": { "identifier": cpr },
            "payor": [{ "reference": "Organization/org-rigshospitalet" }] }),
    ] {
        let path = format!("/fhir/{}", body["resourceType"].as_str().unwrap());
        let refused = send(Method::POST, path.clone(), &blocked, body.clone())
            .await
            .unwrap();
        assert_eq!(denial(&refused), (403, "consent-block".into()), "{body}");
        let written = send(Method::POST, path, &colleague, body.clone())
            .await
            .unwrap();
        assert_eq!(written.status, 201, "{body}: {}", written.text());
    }

    // Records of Bo's, patched to be Anne's: by her CPR number set where the patient is said,
    // by a reference taken away so the CPR number beside it is what is left (removed, or
    // blanked), by a reference to a contained Patient that carries her CPR number. The patch
    // is applied to the version read, and its result is what is checked: each meets her block,
    // and the record is left as it was. (`move` and `copy`, from the reference or from an
    // element nobody checks, are refused before anything is read.)
    let bo_with_cpr = json!({ "reference": "Patient/pat-bo", "identifier": cpr });
    let shapes = [
        (
            json!({ "reference": "Patient/pat-bo" }),
            json!([{ "op": "replace", "path": "/subject", "value": { "identifier": cpr } }]),
        ),
        (
            json!({ "reference": "Patient/pat-bo" }),
            json!([{ "op": "remove", "path": "/subject/reference" },
                   { "op": "add", "path": "/subject/identifier", "value": cpr }]),
        ),
        (
            bo_with_cpr.clone(),
            json!([{ "op": "move", "from": "/subject/reference", "path": "/code/text" }]),
        ),
        (
            bo_with_cpr,
            json!([{ "op": "replace", "path": "/subject/reference", "value": " " }]),
        ),
        (
            json!({ "reference": "Patient/pat-bo" }),
            json!([{ "op": "copy", "from": "/focus/0", "path": "/subject" }]),
        ),
        (
            json!({ "reference": "Patient/pat-bo" }),
            json!([{ "op": "replace", "path": "/subject/reference", "value": "#p1" }]),
        ),
    ];
    for (subject, document) in shapes {
        let bo = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "bo" },
            "subject": subject, "focus": [{ "identifier": cpr }],
            "contained": [{ "resourceType": "Patient", "id": "p1", "identifier": [cpr] }] });
        let path = format!("/fhir/{}", store(backend.base_url(), bo.clone()).await);
        let refused = send(Method::PATCH, path.clone(), &blocked, document.clone())
            .await
            .unwrap();
        // `move` and `copy` are refused before anything is read, whoever they name.
        let moves = document[0]["op"] == "move" || document[0]["op"] == "copy";
        let expected = if moves {
            "write-not-verifiable"
        } else {
            "consent-block"
        };
        assert_eq!(
            denial(&refused),
            (403, expected.into()),
            "{document}: {}",
            refused.text()
        );
        let (_, kept) = backend_exchange(
            backend.base_url(),
            Method::GET,
            path.trim_start_matches("/fhir/"),
            None,
        )
        .await;
        assert_eq!(kept["subject"], bo["subject"], "{document}: {kept}");
    }

    // A FHIRPath Patch that can change whose record it is cannot be applied by the gateway
    // (a value built from nested parts, paths it does not evaluate): refused to everyone.
    let bo = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "bo" },
        "subject": { "reference": "Patient/pat-bo" } });
    let path = format!("/fhir/{}", store(backend.base_url(), bo).await);
    let fhirpath = json!({ "resourceType": "Parameters", "parameter": [{ "name": "operation", "part": [
        { "name": "type", "valueCode": "replace" },
        { "name": "path", "valueString": "Observation.subject" },
        { "name": "value", "valueReference": { "identifier": cpr } }] }] });
    let refused = client
        .send(request(
            Method::PATCH,
            &path,
            Some(&colleague),
            Some(fhirpath),
        ))
        .await
        .unwrap();
    assert_eq!(
        denial(&refused),
        (403, "write-not-verifiable".into()),
        "{}",
        refused.text()
    );
    // A patch that leaves whose record it is alone goes through.
    let noted = send(
        Method::PATCH,
        path,
        &blocked,
        json!([{ "op": "add", "path": "/note", "value": [{ "text": "seen" }] }]),
    )
    .await
    .unwrap();
    assert_eq!(noted.status, 200, "{}", noted.text());
}

/// Where the records live is not where the patients are: with Observations routed to a
/// backend of their own (which holds no Patients), the CPR numbers they name are looked up
/// where the routes send `Patient`. And a server that matches identifiers loosely (this one
/// ignores case) places a record whose system is spelled in capitals as hers too, even when
/// another record of the same answer names her exactly.
#[tokio::test]
async fn identifiers_are_looked_up_where_the_patients_are_and_as_loosely_as_the_server_matches() {
    let backend = backend_with_block().await;
    let labs = BackendProcess::start(&portvagt::demo::default_testbed(), false).unwrap();
    let gateway = Gateway::start_with(Options {
        backend_url: Some(backend.base_url().to_owned()),
        extra_config: format!(
            "[consent]\ncache_ttl = \"1s\"\n\n[[upstream]]\nname = \"labs\"\n\
             resource_types = [\"Observation\"]\n[upstream.backend]\nurl = \"{}\"\n",
            labs.base_url()
        ),
        ..Options::default()
    });
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.rs");
    let mut stored = Vec::new();
    for (system, value) in [
        ("URN:OID:1.2.208.176.1.2", "1111111118"),
        ("urn:oid:1.2.208.176.1.2", "1111111118"),
        ("urn:oid:1.2.208.176.1.2", "0501792275"),
    ] {
        let observation = json!({ "resourceType": "Observation", "status": "final",
            "code": { "coding": [{ "system": "urn:portvagt:test", "code": "labs" }] },
            "subject": { "identifier": { "system": system, "value": value } } });
        let created = store(labs.base_url(), observation).await;
        stored.push(created.trim_start_matches("Observation/").to_owned());
    }
    let search = "/fhir/Observation?code=urn:portvagt:test%7Clabs";
    let his = client.get(search, Some(&blocked)).await.unwrap();
    assert_eq!(his.status, 200, "{}", his.text());
    assert_eq!(
        entry_ids(&his),
        std::slice::from_ref(&stored[2]),
        "{}",
        his.text()
    );
    let theirs = client.get(search, Some(&colleague)).await.unwrap();
    let mut all = stored.clone();
    all.sort();
    assert_eq!(entry_ids(&theirs), all);
    let events = recorded(&gateway, &theirs);
    assert!(
        events.contains("Patient/pat-anne") && events.contains("Patient/pat-bo"),
        "{events}"
    );
}

/// What a server reads into a patch, and when, is what the gateway checks: a pointer through
/// `__proto__` (which this server passes over, so `/__proto__/subject` is `/subject`), a patch
/// of a type outside the compartment that still names its patient (`Device.patient`), and a
/// client's own `If-Match` naming another version than the one read and checked (412, not
/// sent).
#[tokio::test]
async fn a_patch_is_checked_as_the_server_reads_it_on_the_version_it_changes() {
    let backend = backend_with_block().await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let (blocked, colleague) = blocked_and_colleague(&gateway, "user/*.cruds");
    let cpr = anne_cpr();
    let stored = |body: serde_json::Value| store(backend.base_url(), body);
    let current = |path: String| {
        let base = backend.base_url().to_owned();
        async move { backend_exchange(&base, Method::GET, &path, None).await.1 }
    };
    let bo = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "bo" },
        "subject": { "reference": "Patient/pat-bo" } });

    let observation = stored(bo.clone()).await;
    let proto = json!([{ "op": "replace", "path": "/__proto__/subject",
        "value": { "identifier": cpr } }]);
    for token in [&blocked, &colleague] {
        let refused = client
            .send(json_patch(
                &format!("/fhir/{observation}"),
                token,
                &proto.to_string(),
                &[],
            ))
            .await
            .unwrap();
        assert_eq!(
            denial(&refused),
            (403, "write-not-verifiable".into()),
            "{}",
            refused.text()
        );
    }
    let bo_token = gateway.token(json!({ "scope": "patient/*.cruds", "patient": "pat-bo" }));
    let refused = client
        .send(json_patch(
            &format!("/fhir/{observation}"),
            &bo_token,
            &proto.to_string(),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(current(observation.clone()).await["subject"], bo["subject"]);

    let device = stored(json!({ "resourceType": "Device", "status": "active" })).await;
    let implanted = json!([{ "op": "add", "path": "/patient", "value": { "identifier": cpr } }]);
    let refused = client
        .send(json_patch(
            &format!("/fhir/{device}"),
            &blocked,
            &implanted.to_string(),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(
        denial(&refused),
        (403, "consent-block".into()),
        "{}",
        refused.text()
    );
    assert!(current(device).await.get("patient").is_none());

    // A `test` in a patch of Anne's record tells the professional she blocked nothing: right
    // guess or wrong, her record is not there for him, as for a delete.
    let hers = stored(json!({ "resourceType": "Observation", "status": "final",
        "code": { "text": "hiv" }, "subject": { "reference": "Patient/pat-anne" } }))
    .await;
    let mut answers = Vec::new();
    for guess in ["hiv", "flu"] {
        let probe = json!([{ "op": "test", "path": "/code/text", "value": guess },
            { "op": "add", "path": "/subject/display", "value": "x" }]);
        let answer = client
            .send(json_patch(
                &format!("/fhir/{hers}"),
                &blocked,
                &probe.to_string(),
                &[],
            ))
            .await
            .unwrap();
        answers.push((answer.status, answer.detail_code()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 404, "{answers:?}");
    // Nor does a patch of what is not there, nor a conditional patch (refused before anything
    // is looked up, whatever its criteria match).
    let display = json!([{ "op": "add", "path": "/subject/display", "value": "x" }]).to_string();
    for (path, status) in [
        ("/fhir/Observation/no-such-observation".to_owned(), 404),
        ("/fhir/Observation?code:text=hiv".to_owned(), 403),
        ("/fhir/Observation?code:text=flu".to_owned(), 403),
    ] {
        for token in [&blocked, &colleague] {
            let answer = client
                .send(json_patch(&path, token, &display, &[]))
                .await
                .unwrap();
            assert_eq!(answer.status, status, "{path}: {}", answer.text());
        }
    }
    // A Patient linked to hers by her CPR number reaches her record, patched as put.
    let link = json!([{ "op": "add", "path": "/link", "value": [{ "type": "seealso",
        "other": { "type": "Patient", "identifier": cpr } }] }]);
    let refused = client
        .send(json_patch(
            "/fhir/Patient/pat-carla",
            &blocked,
            &link.to_string(),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(
        denial(&refused),
        (403, "consent-block".into()),
        "{}",
        refused.text()
    );
    assert!(
        current("Patient/pat-carla".to_owned())
            .await
            .get("link")
            .is_none()
    );

    // A patient spelled so that servers read it differently (by its first pair, its last),
    // and a Consent naming her with a version (a search for her Consents would miss it): not
    // verifiable, for anyone.
    for body in [
        json!({ "resourceType": "Appointment", "status": "booked", "participant": [
            { "actor": { "reference": "Patient/pat-bo" }, "status": "accepted" },
            { "actor": { "reference": "Patient/pat-anne/_history/1/../../Patient/pat-bo" },
              "status": "accepted" }] }),
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
            "subject": { "reference": "../Patient/pat-anne" } }),
        json!({ "resourceType": "Consent", "status": "active", "scope": { "text": "privacy" },
            "category": [{ "text": "x" }], "patient": { "reference": "Patient/pat-anne/_history/1" },
            "provision": { "type": "deny" } }),
    ] {
        let kind = body["resourceType"].as_str().unwrap().to_owned();
        let refused = client
            .send(request(
                Method::POST,
                &format!("/fhir/{kind}"),
                Some(&colleague),
                Some(body.clone()),
            ))
            .await
            .unwrap();
        assert_eq!(
            denial(&refused),
            (403, "write-not-verifiable".into()),
            "{body}: {}",
            refused.text()
        );
    }

    // Her If-Match names a version other than the one the gateway read: not sent.
    let note = json!([{ "op": "add", "path": "/subject/display", "value": "Bo" }]);
    for (if_match, status) in [("W/\"not-the-current-one\"", 412), ("*", 200)] {
        let answer = client
            .send(json_patch(
                &format!("/fhir/{observation}"),
                &colleague,
                &note.to_string(),
                &[("if-match", if_match)],
            ))
            .await
            .unwrap();
        assert_eq!(answer.status, status, "{if_match}: {}", answer.text());
    }
    let version = current(observation.clone()).await["meta"]["versionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = client
        .send(json_patch(
            &format!("/fhir/{observation}"),
            &colleague,
            &note.to_string(),
            &[("if-match", &format!("W/\"{version}\""))],
        ))
        .await
        .unwrap();
    assert_eq!(again.status, 200, "{}", again.text());
}
