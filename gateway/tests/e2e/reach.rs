//! "Whose data does this touch?" answered once: each test is a request shape that slipped
//! between the consent pre-check, the audit record and the path rules before they shared one
//! reach. Every test runs against a real backend of its own, seeded with the sample data.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use portvagt::demo::BackendProcess;
use serde_json::{Value, json};

use crate::support::{Answer, Gateway, Options, backend_send, json_patch, request, send_batch};

const AUTHORIZATION: &str = "https://autregweb.sst.dk";
const CPR: &str = "urn:oid:1.2.208.176.1.2";

fn seeded() -> BackendProcess {
    BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap()
}

/// Stores a Consent for Anne whose provision is `provision`.
async fn anne_consents(backend: &BackendProcess, provision: Value) {
    let consent = json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": "Patient/pat-anne" },
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT" }] },
        "provision": provision
    });
    let created = backend_send(backend.base_url(), Method::POST, "Consent", Some(consent)).await;
    assert_eq!(created["resourceType"], "Consent", "{created}");
}

/// A Consent actor (R4 requires its role): a professional by authorisation id or reference.
fn actor(reference: Value) -> Value {
    json!([{
        "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP" }] },
        "reference": reference
    }])
}

fn by_authorisation(id: &str) -> Value {
    actor(json!({ "identifier": { "system": AUTHORIZATION, "value": id } }))
}

fn blocks_ns363() -> Value {
    json!({ "type": "deny", "actor": by_authorisation("NS363") })
}

fn gateway(backend: &BackendProcess) -> Gateway {
    Gateway::start_with(Options {
        backend_url: Some(backend.base_url().to_owned()),
        extra_config: "[consent]\ncache_ttl = \"1s\"\n".into(),
        ..Options::default()
    })
}

fn professional(gateway: &Gateway, claims: Value) -> String {
    let mut all = json!({ "scope": "user/*.cruds", "purpose_of_use": "TREATMENT", "role": "7170" });
    for (key, value) in claims.as_object().unwrap() {
        all[key] = value.clone();
    }
    gateway.token(all)
}

fn denial(answer: &Answer) -> (u16, String) {
    (answer.status.as_u16(), answer.detail_code())
}

/// The patients the AuditEvents of one request name.
pub(crate) fn audited_patients(gateway: &Gateway, answer: &Answer) -> Vec<String> {
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    let mut patients: Vec<String> = gateway
        .audit_events_for(request_id)
        .iter()
        .flat_map(|event| {
            event["entity"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|entity| entity["what"]["reference"].as_str())
                .filter(|r| r.starts_with("Patient/"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    patients.sort();
    patients.dedup();
    patients
}

#[tokio::test]
async fn a_blocked_professional_cannot_count_the_patients_data_in_any_spelling() {
    let backend = seeded();
    anne_consents(&backend, blocks_ns363()).await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let blocked = professional(&gateway, json!({ "authorization_id": "NS363" }));
    let colleague = professional(&gateway, json!({ "authorization_id": "XY123" }));

    // Every way the backend accepts to name Anne is a request pinned to her: refused.
    for query in [
        "subject=pat-anne&_summary=count",
        "subject:Patient=pat-anne&code=4548-4&_summary=count",
        "patient=pat-anne&code=4548-4&_count=0",
        "subject=https%3A%2F%2Felsewhere.example%2Ffhir%2FPatient%2Fpat-anne&_summary=count",
        "subject=Patient%2Fpat-anne%2F_history%2F1&code=4548-4",
        "subject=pat-bo,pat-anne",
    ] {
        let path = format!("/fhir/Observation?{query}");
        let answer = client.get(&path, Some(&blocked)).await.unwrap();
        assert_eq!(denial(&answer), (403, "consent-block".into()), "{query}");
        // The same request by a colleague is not refused (the backend decides what it finds).
        let allowed = client.get(&path, Some(&colleague)).await.unwrap();
        assert_ne!(allowed.status, 403, "{query}: {}", allowed.text());
    }
    // The colleague's count of Anne's data is answered, with its number.
    let count = client
        .get(
            "/fhir/Observation?patient=pat-anne&_summary=count",
            Some(&colleague),
        )
        .await
        .unwrap();
    assert_eq!(count.status, 200, "{}", count.text());
    assert_eq!(count.json()["total"], 3, "{}", count.text());
    // By identifier: looked up, and just as pinned.
    let path = format!("/fhir/Patient?identifier={CPR}%7C1111111118");
    let answer = client.get(&path, Some(&blocked)).await.unwrap();
    assert_eq!(denial(&answer), (403, "consent-block".into()));

    // A count that names nobody would count Anne too: refused for everyone, blocked or not,
    // so the refusal says nothing about her.
    for token in [&blocked, &colleague] {
        let answer = client
            .get("/fhir/Observation?code=4548-4&_summary=count", Some(token))
            .await
            .unwrap();
        assert_eq!(denial(&answer), (403, "count-not-pinned".into()));
        let answer = client
            .get("/fhir/Condition?code=44054006&_count=0", Some(token))
            .await
            .unwrap();
        assert_eq!(denial(&answer), (403, "count-not-pinned".into()));
    }
}

/// The entries, `total` and link relations of a searchset, as a blocked caller sees them.
fn shape(answer: &Answer) -> Value {
    let body = answer.json();
    let mut ids = shape_of(&body);
    ids.sort();
    json!({ "status": answer.status.as_u16(), "ids": ids, "total": body.get("total") })
}

#[tokio::test]
async fn a_blocked_professional_sees_what_they_would_see_if_the_data_did_not_exist() {
    // One backend where Anne blocks the physician, one where Anne's records never were.
    let blocking = seeded();
    anne_consents(&blocking, blocks_ns363()).await;
    let without = BackendProcess::start(&portvagt::demo::default_testbed(), false).unwrap();
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(
            portvagt::demo::default_testbed().join("backend/seed/bundle.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut without_anne = seed.clone();
    without_anne["entry"] = Value::Array(
        seed["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| {
                let resource = entry["resource"].to_string();
                !resource.contains("Patient/pat-anne") || entry["resource"]["id"] == "pat-anne"
            })
            .cloned()
            .collect(),
    );
    let loaded = backend_send(without.base_url(), Method::POST, "", Some(without_anne)).await;
    assert_eq!(loaded["type"], "transaction-response", "{loaded}");
    let with_block = gateway(&blocking);
    let with_nothing = gateway(&without);
    // The same request as the physician, to both.
    let both = |path: &'static str| {
        let (a, b) = (&with_block, &with_nothing);
        async move {
            let physician = |g: &Gateway| professional(g, json!({ "authorization_id": "NS363" }));
            (
                a.client().get(path, Some(&physician(a))).await.unwrap(),
                b.client().get(path, Some(&physician(b))).await.unwrap(),
            )
        }
    };
    // Reads by id and instance history: not found, in the same words.
    for path in [
        "/fhir/Observation/obs-anne-bp",
        "/fhir/Condition/cond-anne-1/_history",
        "/fhir/Encounter/enc-anne-1",
    ] {
        let (a, b) = both(path).await;
        assert_eq!(
            denial(&a),
            denial(&b),
            "{path}: {} / {}",
            a.text(),
            b.text()
        );
        assert_eq!(denial(&a), (404, "not-found".into()), "{path}");
        let words = |answer: &Answer| answer.json()["issue"][0]["details"].clone();
        assert_eq!(words(&a), words(&b), "{path}");
    }
    for path in [
        "/fhir/Observation?code=4548-4",
        "/fhir/Observation?_count=100",
        "/fhir/Condition?code=44054006",
        "/fhir/Observation?performer=Practitioner/prac-ns363",
        "/fhir/MedicationRequest?requester=Practitioner/prac-ns363",
        "/fhir/Encounter?status=finished",
    ] {
        let (a, b) = both(path).await;
        assert_eq!(shape(&a), shape(&b), "{path}");
        assert!(
            !a.text().contains("consent-filtered"),
            "{path}: {}",
            a.text()
        );
        assert!(
            a.json().get("total").is_none(),
            "{path}: a total counts what is withheld"
        );
    }
}

#[tokio::test]
async fn deletes_moves_and_batch_entries_are_in_the_logs_of_the_patients_they_touch() {
    let backend = seeded();
    let gateway = gateway(&backend);
    let client = gateway.client();
    let writer = professional(&gateway, json!({ "authorization_id": "XY123" }));

    // A delete: its answer names nobody, the resource it removed was Bo's.
    let answer = client
        .send(request(
            Method::DELETE,
            "/fhir/Condition/cond-bo-1",
            Some(&writer),
            None,
        ))
        .await
        .unwrap();
    assert!(answer.status.is_success(), "{}", answer.text());
    assert_eq!(audited_patients(&gateway, &answer), ["Patient/pat-bo"]);

    // An update that moves Bo's weight to Carla: both logs.
    let mut moved = backend_send(
        backend.base_url(),
        Method::GET,
        "Observation/obs-bo-weight",
        None,
    )
    .await;
    moved["subject"] = json!({ "reference": "Patient/pat-carla" });
    moved.as_object_mut().unwrap().remove("meta");
    let answer = client
        .send(request(
            Method::PUT,
            "/fhir/Observation/obs-bo-weight",
            Some(&writer),
            Some(moved),
        ))
        .await
        .unwrap();
    assert!(answer.status.is_success(), "{}", answer.text());
    assert_eq!(
        audited_patients(&gateway, &answer),
        ["Patient/pat-bo", "Patient/pat-carla"]
    );

    // A patch that moves Carla's hba1c to Anne, answered without a body.
    let patch = json_patch(
        "/fhir/Observation/obs-carla-hba1c",
        &writer,
        r#"[{"op":"replace","path":"/subject/reference","value":"Patient/pat-anne"}]"#,
        &[("prefer", "return=minimal")],
    );
    let answer = client.send(patch).await.unwrap();
    assert!(answer.status.is_success(), "{}", answer.text());
    let patients = audited_patients(&gateway, &answer);
    assert!(
        patients.contains(&"Patient/pat-carla".to_owned()),
        "{patients:?}"
    );

    // A batch: the entry that deletes Anne's encounter is in Anne's log.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "DELETE", "url": "Encounter/enc-anne-1" } },
        { "request": { "method": "GET", "url": "Patient/pat-bo" } }
    ]});
    let answer = send_batch(&client, &writer, batch).await;
    let patients = audited_patients(&gateway, &answer);
    assert!(
        patients.contains(&"Patient/pat-anne".to_owned()),
        "{patients:?}"
    );
    assert!(
        patients.contains(&"Patient/pat-bo".to_owned()),
        "{patients:?}"
    );
    // Each entry is an access of its own: Anne's log says her encounter was deleted, Bo's
    // that his record was read.
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    let events = gateway.audit_events_for(request_id);
    let of = |patient: &str| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|e| e.to_string().contains(&format!("\"Patient/{patient}\"")))
            .map(|e| {
                (
                    e["action"].as_str().unwrap_or_default().to_owned(),
                    e["subtype"][0]["code"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(of("pat-anne"), [("D".to_owned(), "delete".to_owned())]);
    assert_eq!(of("pat-bo"), [("R".to_owned(), "read".to_owned())]);

    // A POST _search's criteria are its query in the record.
    let search = Request::builder()
        .method(Method::POST)
        .uri("/fhir/Observation/_search")
        .header("authorization", format!("Bearer {writer}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(
            "patient=Patient%2Fpat-carla&code=4548-4",
        )))
        .unwrap();
    let answer = client.send(search).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    let events = gateway.audit_events_for(request_id);
    let query = events[0]["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entity| entity["role"]["code"] == "24")
        .expect("a query entity");
    let description = query["description"].as_str().unwrap();
    assert!(description.contains("code=4548-4"), "{description}");
    assert!(description.contains("pat-carla"), "{description}");

    // A search that finds nothing still touched the patient it named.
    let answer = client
        .get(
            "/fhir/Observation?subject=Patient/pat-anne&code=none",
            Some(&writer),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(audited_patients(&gateway, &answer), ["Patient/pat-anne"]);
}

#[tokio::test]
async fn consents_are_read_as_r4_writes_them_and_know_the_professional_by_every_name() {
    let backend = seeded();
    // Deny everyone except the colleague XY123.
    anne_consents(
        &backend,
        json!({ "type": "deny", "provision": [{ "type": "permit", "actor": by_authorisation("ZZ4Q1") }] }),
    )
    .await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let someone = professional(&gateway, json!({ "authorization_id": "AB111" }));
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&someone))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "consent-block".into()));
    // The nurse, known to the token only as Practitioner/prac-nurse-5166 (whose authorisation
    // id the backend knows), is the one excepted.
    let nurse = professional(
        &gateway,
        json!({ "fhirUser": "Practitioner/prac-nurse-5166" }),
    );
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&nurse))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());

    // A block by reference holds for the same physician arriving with only an
    // authorisation id (as a SAML exchange makes her).
    let backend = seeded();
    anne_consents(
        &backend,
        json!({ "type": "deny", "actor": actor(json!({ "reference": "Practitioner/prac-ns363" })) }),
    )
    .await;
    let gateway = self::gateway(&backend);
    let client = gateway.client();
    let by_id = professional(&gateway, json!({ "authorization_id": "NS363" }));
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&by_id))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "consent-block".into()));
    // Only Observations blocked: her conditions are readable, her observations withheld.
    let backend = seeded();
    anne_consents(
        &backend,
        json!({ "type": "deny", "actor": by_authorisation("NS363"),
            "class": [{ "system": "http://hl7.org/fhir/resource-types", "code": "Observation" }] }),
    )
    .await;
    let gateway = self::gateway(&backend);
    let client = gateway.client();
    let physician = professional(&gateway, json!({ "authorization_id": "NS363" }));
    let conditions = client
        .get("/fhir/Condition?patient=pat-anne", Some(&physician))
        .await
        .unwrap();
    assert_eq!(conditions.status, 200, "{}", conditions.text());
    assert_eq!(shape(&conditions)["ids"], json!(["Condition/cond-anne-1"]));
    let observations = client
        .get("/fhir/Observation?patient=pat-anne", Some(&physician))
        .await
        .unwrap();
    assert_eq!(denial(&observations), (403, "consent-block".into()));
    let everything = client
        .get("/fhir/Patient/pat-anne/$everything", Some(&physician))
        .await
        .unwrap();
    assert_eq!(everything.status, 200, "{}", everything.text());
    let ids = shape(&everything)["ids"].to_string();
    assert!(ids.contains("Condition/cond-anne-1"), "{ids}");
    assert!(!ids.contains("Observation/obs-anne"), "{ids}");
}

#[tokio::test]
async fn a_resource_about_another_patient_by_identifier_is_not_hers() {
    let backend = seeded();
    // Bo's observation, his subject by CPR only, Anne named as performer.
    let observation = json!({
        "resourceType": "Observation", "id": "obs-bo-by-cpr", "status": "final",
        "code": { "text": "note" },
        "subject": { "identifier": { "system": CPR, "value": "0501792275" } },
        "performer": [{ "reference": "Patient/pat-anne" }]
    });
    backend_send(
        backend.base_url(),
        Method::PUT,
        "Observation/obs-bo-by-cpr",
        Some(observation),
    )
    .await;
    let gateway = gateway(&backend);
    let anne = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-anne" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation/obs-bo-by-cpr", Some(&anne))
        .await
        .unwrap();
    // Not hers; by id, answered as a missing one.
    assert_eq!(denial(&answer), (404, "not-found".into()));
}

#[tokio::test]
async fn a_binding_route_holds_however_the_path_is_spelled() {
    let gateway = Gateway::start_with(Options {
        extra_config:
            "[[route]]\npath_prefix = \"/fhir/Patient\"\nrequire_certificate_binding = true\n"
                .into(),
        ..Options::default()
    });
    let client = gateway.client();
    let unbound = gateway.token(json!({ "scope": "user/*.rs" }));
    for path in [
        "/fhir/Patient/pat-anne",
        "/fhir/P%61tient/pat-anne",
        "/fhir/%50atient?name=Hansen",
        "/f%68ir/Patient/pat-anne",
    ] {
        let answer = client.get(path, Some(&unbound)).await.unwrap();
        assert_eq!(answer.status, 401, "{path}: {}", answer.text());
    }
}

#[tokio::test]
async fn writes_are_checked_against_the_backend_they_go_to() {
    // Observations live on a second backend, where one of Bo's exists that the main one has
    // never seen.
    let second = seeded();
    let only_there = json!({ "resourceType": "Observation", "id": "obs-bo-second", "status": "final",
        "code": { "text": "x" }, "subject": { "reference": "Patient/pat-bo" } });
    backend_send(
        second.base_url(),
        Method::PUT,
        "Observation/obs-bo-second",
        Some(only_there),
    )
    .await;
    let gateway = Gateway::start_with(Options {
        extra_config: format!(
            "[[upstream]]\nname = \"observations\"\nresource_types = [\"Observation\"]\n\
             [upstream.backend]\nurl = \"{}\"\n",
            second.base_url()
        ),
        ..Options::default()
    });
    let anne =
        gateway.token(json!({ "scope": "patient/Observation.cruds", "patient": "pat-anne" }));
    let takeover = json!({ "resourceType": "Observation", "id": "obs-bo-second", "status": "final",
        "code": { "text": "x" }, "subject": { "reference": "Patient/pat-anne" } });
    let answer = gateway
        .client()
        .send(request(
            Method::PUT,
            "/fhir/Observation/obs-bo-second",
            Some(&anne),
            Some(takeover),
        ))
        .await
        .unwrap();
    // Refused as the target is not hers, answered as a missing one.
    assert_eq!(denial(&answer), (404, "not-found".into()));
    let still = backend_send(
        second.base_url(),
        Method::GET,
        "Observation/obs-bo-second",
        None,
    )
    .await;
    assert_eq!(still["subject"]["reference"], "Patient/pat-bo");

    // A backend that will not say what a delete would remove: the delete is refused, not sent.
    let throttled = crate::resilience::FaultyBackend::start(crate::resilience::TOO_MANY).await;
    let gateway = Gateway::start_with(Options {
        extra_config: format!(
            "[[upstream]]\nname = \"observations\"\nresource_types = [\"Observation\"]\n\
             [upstream.backend]\nurl = \"{}\"\n",
            throttled.url
        ),
        ..Options::default()
    });
    let writer = professional(&gateway, json!({ "authorization_id": "XY123" }));
    let answer = gateway
        .client()
        .send(request(
            Method::DELETE,
            "/fhir/Observation/obs-bo-bp",
            Some(&writer),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (503, "lookup-failed".into()));
    assert_eq!(
        throttled.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the gateway's own read reached the backend"
    );
}

#[tokio::test]
async fn shapes_that_hide_whose_data_it_is_are_refused_or_checked_entry_by_entry() {
    let backend = seeded();
    anne_consents(&backend, blocks_ns363()).await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let blocked = professional(&gateway, json!({ "authorization_id": "NS363" }));

    // A plain `_elements` is widened with the references and checked: Anne's blocked
    // observation is as if it were not there, as without `_elements`.
    let answer = client
        .get(
            "/fhir/Observation/obs-anne-bp?_elements=code,value",
            Some(&blocked),
        )
        .await
        .unwrap();
    assert_eq!(denial(&answer), (404, "not-found".into()));
    // Answers without the references that say whose they are: neither checkable nor auditable.
    for path in [
        "/fhir/Observation?_elements:exclude=subject",
        "/fhir/Observation?_elements=code&_elements=value",
        "/fhir/Observation?_summary=text",
    ] {
        let answer = client.get(path, Some(&blocked)).await.unwrap();
        assert_eq!(denial(&answer), (403, "references-hidden".into()), "{path}");
    }
    let bo = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-bo" }));
    let answer = client
        .get(
            "/fhir/Observation?performer=Patient/pat-bo&_elements:exclude=subject",
            Some(&bo),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());

    // A batch: the count that names Anne is refused in its entry; the search that names nobody
    // loses her entries without a trace; the rest is answered.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation?subject=Patient/pat-anne&code=4548-4" } },
        { "request": { "method": "GET", "url": "Observation?code=4548-4" } },
        { "request": { "method": "GET", "url": "Observation/obs-anne-bp" } },
        { "request": { "method": "GET", "url": "Patient/pat-bo" } }
    ]});
    let answer = send_batch(&client, &blocked, batch).await;
    let body = answer.json();
    assert_eq!(body["entry"][0]["response"]["status"], "403 Forbidden");
    let nested = &body["entry"][1]["resource"];
    assert!(nested.get("total").is_none(), "{nested}");
    let ids = shape_of(nested);
    assert!(
        ids.contains(&"Observation/obs-bo-hba1c".to_owned()),
        "{ids:?}"
    );
    assert!(!ids.iter().any(|id| id.contains("anne")), "{ids:?}");
    assert_eq!(body["entry"][2]["response"]["status"], "404 Not Found");
    assert!(body["entry"][2].get("resource").is_none());
    assert_eq!(body["entry"][3]["resource"]["id"], "pat-bo");

    // A patch that would move Bo's weight to Anne names her: refused before it happens.
    let patch = json_patch(
        "/fhir/Observation/obs-bo-weight",
        &blocked,
        r#"[{"op":"replace","path":"/subject/reference","value":"Patient/pat-anne"}]"#,
        &[("prefer", "return=minimal")],
    );
    let answer = client.send(patch).await.unwrap();
    assert_eq!(denial(&answer), (403, "consent-block".into()));
    let weight = backend_send(
        backend.base_url(),
        Method::GET,
        "Observation/obs-bo-weight",
        None,
    )
    .await;
    assert_eq!(weight["subject"]["reference"], "Patient/pat-bo");

    // A conditional delete reads what it would delete with the criteria that match: a page
    // size does not hide Anne's result from the check.
    let answer = client
        .send(request(
            Method::DELETE,
            "/fhir/Observation?code=4548-4&_count=1",
            Some(&blocked),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 404, "{}", answer.text());
    let hba1c = backend_send(
        backend.base_url(),
        Method::GET,
        "Observation/obs-anne-hba1c",
        None,
    )
    .await;
    assert_eq!(hba1c["id"], "obs-anne-hba1c");
}

#[tokio::test]
async fn a_head_request_is_in_the_log_of_the_patient_whose_resource_it_touched() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .send(request(
            Method::HEAD,
            "/fhir/Observation/obs-bo-bp",
            Some(&token),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.text().is_empty());
    assert_eq!(audited_patients(&gateway, &answer), ["Patient/pat-bo"]);
}

fn shape_of(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            format!(
                "{}/{}",
                entry["resource"]["resourceType"].as_str().unwrap_or("?"),
                entry["resource"]["id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

#[tokio::test]
async fn what_the_caller_cannot_do_or_did_not_name_tells_nothing_of_a_block() {
    let backend = seeded();
    anne_consents(&backend, blocks_ns363()).await;
    let gateway = gateway(&backend);
    let client = gateway.client();
    let reader = professional(
        &gateway,
        json!({ "authorization_id": "NS363", "scope": "user/*.rs" }),
    );

    // A write entry the caller has no scope for is refused for that, and nothing of it is
    // looked up: the answer is the same whether a blocked patient's data matches or not.
    for code in ["4548-4", "no-such-code"] {
        let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "DELETE", "url": format!("Observation?code={code}") } },
            { "request": { "method": "GET", "url": "Patient/pat-bo" } }
        ]});
        let answer = client
            .send(request(Method::POST, "/fhir", Some(&reader), Some(batch)))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{code}: {}", answer.text());
        let body = answer.json();
        assert_eq!(
            body["entry"][0]["response"]["status"], "403 Forbidden",
            "{code}"
        );
        assert_eq!(
            body["entry"][0]["response"]["outcome"]["issue"][0]["details"]["coding"][0]["code"],
            "insufficient-scope",
            "{code}"
        );
    }

    // Naming somebody else does not make Anne's resource a refusal: not found.
    let answer = client
        .get(
            "/fhir/Observation/obs-anne-bp?patient=Patient/pat-bo",
            Some(&reader),
        )
        .await
        .unwrap();
    assert_eq!(denial(&answer), (404, "not-found".into()));

    // A patch that moves a value the gateway cannot read before it happens is refused.
    let writer = professional(&gateway, json!({ "authorization_id": "XY123" }));
    let patch = json_patch(
        "/fhir/Observation/obs-bo-weight",
        &writer,
        r#"[{"op":"copy","from":"/performer/0/reference","path":"/subject/reference"}]"#,
        &[],
    );
    let answer = client.send(patch).await.unwrap();
    assert_eq!(denial(&answer), (403, "write-not-verifiable".into()));

    // A conditional create whose criteria find Anne's resource names her through them: checked
    // before anything is written or answered.
    let create = Request::builder()
        .method(Method::POST)
        .uri("/fhir/Observation")
        .header(
            "authorization",
            format!(
                "Bearer {}",
                professional(&gateway, json!({ "authorization_id": "NS363" }))
            ),
        )
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "_id=obs-anne-bp")
        .header("prefer", "return=minimal")
        .body(Full::new(Bytes::from(
            json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
                "subject": { "reference": "Patient/pat-bo" } })
            .to_string(),
        )))
        .unwrap();
    let answer = client.send(create).await.unwrap();
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert!(answer.headers.get("location").is_none());

    // Criteria tested against patients' data on answers that are never withheld: refused.
    let answer = client
        .get(
            "/fhir/Practitioner?_has:Observation:performer:code=4548-4",
            Some(&reader),
        )
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "search-reaches-other-types".into()));
    // A cascading delete would remove what no check saw.
    let answer = client
        .send(request(
            Method::DELETE,
            "/fhir/Organization/org-laegehuset?_cascade=delete",
            Some(&writer),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (400, "method-override".into()));

    // Reference data may still be asked for in summary.
    let answer = client
        .get("/fhir/metadata?_summary=true", Some(&reader))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn a_base_of_its_own_serves_only_what_its_route_takes() {
    let second = seeded();
    let gateway = Gateway::start_with(Options {
        extra_config: format!(
            "[[upstream]]\nname = \"second\"\npath_prefix = \"/fhir/second\"\nresource_types = [\"Observation\"]\n\
             [upstream.backend]\nurl = \"{}\"\n\n\
             [[route]]\npath_prefix = \"/fhir/Patient\"\nrequire_certificate_binding = true\n",
            second.base_url()
        ),
        ..Options::default()
    });
    let unbound = gateway.token(json!({ "scope": "user/*.rs" }));
    // Patients are bound on the main base; under the second base no route takes them at all.
    let answer = gateway
        .client()
        .get("/fhir/second/Patient/pat-anne", Some(&unbound))
        .await
        .unwrap();
    assert_eq!(
        denial(&answer),
        (404, "unknown-path".into()),
        "{}",
        answer.text()
    );
    let answer = gateway
        .client()
        .get("/fhir/second/Observation/obs-bo-bp", Some(&unbound))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn a_citizen_naming_someone_by_identifier_tests_and_logs_nobody_else() {
    let backend = seeded();
    let gateway = gateway(&backend);
    let anne = gateway.token(json!({ "scope": "patient/Patient.rs", "patient": "pat-anne" }));
    let answer = gateway
        .client()
        .get(
            &format!("/fhir/Patient?identifier={CPR}%7C0501792275"),
            Some(&anne),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(audited_patients(&gateway, &answer), ["Patient/pat-anne"]);

    // The same as a batch entry: narrowed to her, so nobody else is looked up, or logged.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": format!("Patient?identifier={CPR}|0501792275") } }
    ]});
    let answer = gateway
        .client()
        .send(request(Method::POST, "/fhir", Some(&anne), Some(batch)))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let audited = audited_patients(&gateway, &answer);
    assert!(
        !audited.contains(&"Patient/pat-bo".to_owned()),
        "{audited:?}"
    );
}

#[tokio::test]
async fn missing_and_withheld_batch_entries_look_alike() {
    let backend = seeded();
    anne_consents(&backend, blocks_ns363()).await;
    let gateway = gateway(&backend);
    let blocked = professional(&gateway, json!({ "authorization_id": "NS363" }));
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation/obs-anne-bp" } },
        { "request": { "method": "GET", "url": "Observation/no-such-observation" } }
    ]});
    let answer = gateway
        .client()
        .send(request(Method::POST, "/fhir", Some(&blocked), Some(batch)))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["entry"][0], body["entry"][1], "{body}");
    assert_eq!(body["entry"][1]["response"]["status"], "404 Not Found");
}
