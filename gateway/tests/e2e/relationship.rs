//! The treatment relationship end to end, for each source and each outcome: Dr. Kjær (role
//! 7170, NS363) treats Anne (an ongoing EpisodeOfCare at her practice in the seed) and not Bo.
//! Without a relationship a request naming the patient is refused `relationship-required` in
//! every spelling, an unpinned search leaves the patient out without a trace, a write that
//! would move data to her is refused, and værdispring (EMERGENCY with a reason) lets the access
//! through, marked and counted for follow-up. The relation service is asked per patient,
//! cached, and refused when it is down, slow or wrong (503).

use std::time::Duration;

use http::Method;
use portvagt::demo::BackendProcess;
use serde_json::{Value, json};

use crate::support::{
    Answer, Gateway, Options, backend_send, free_port, metric_value, request, send_batch,
};

const CPR: &str = "urn:oid:1.2.208.176.1.2";
const BO_CPR: &str = "0501792275";

fn fhir_source(backend: Option<&BackendProcess>) -> Gateway {
    Gateway::start_with(Options {
        backend_url: backend.map(|b| b.base_url().to_owned()),
        extra_config: "[relationship]\nroles = [\"7170\"]\nsource = \"fhir\"\n\
                       cache_ttl = \"1s\"\nnegative_cache_ttl = \"1s\"\n"
            .into(),
        ..Options::default()
    })
}

/// Dr. Kjær's token, with `purpose` of use.
fn kjaer(gateway: &Gateway, purpose: &str) -> String {
    gateway.token(json!({
        "scope": "openid fhirUser user/*.rs user/Observation.cruds",
        "authorization_id": "NS363", "role": "7170", "name": "Mette Kjær",
        "fhirUser": "Practitioner/prac-ns363", "purpose_of_use": purpose,
    }))
}

fn denial(answer: &Answer) -> (u16, String) {
    (answer.status.as_u16(), answer.detail_code())
}

fn request_id(answer: &Answer) -> String {
    answer.headers["x-request-id"].to_str().unwrap().to_owned()
}

/// The `access-basis` details of the events of one request, per patient.
fn bases(gateway: &Gateway, answer: &Answer) -> Vec<(String, String)> {
    gateway
        .audit_events_for(&request_id(answer))
        .iter()
        .flat_map(|event| event["entity"].as_array().cloned().unwrap_or_default())
        .filter_map(|entity| {
            let patient = entity["what"]["reference"].as_str()?.to_owned();
            let basis = entity["detail"]
                .as_array()?
                .iter()
                .find(|d| d["type"] == "access-basis")?["valueString"]
                .as_str()?
                .to_owned();
            Some((patient, basis))
        })
        .collect()
}

/// Reads `patient` with `token`: answered, and her AuditEvent gives `basis`.
async fn read_on_basis(gateway: &Gateway, token: &str, patient: &str, basis: &str) {
    let answer = gateway
        .client()
        .get(&format!("/fhir/Patient/{patient}"), Some(token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        bases(gateway, &answer),
        vec![(format!("Patient/{patient}"), basis.to_owned())]
    );
}

async fn metrics(gateway: &Gateway) -> String {
    gateway.client().get("/metrics", None).await.unwrap().text()
}

#[tokio::test]
async fn without_a_relationship_every_spelling_of_the_patient_is_refused() {
    let gateway = fhir_source(None);
    let client = gateway.client();
    let token = kjaer(&gateway, "TREATMENT");

    // Anne: an ongoing EpisodeOfCare at Dr. Kjær's practice, recorded as the basis.
    read_on_basis(
        &gateway,
        &token,
        "pat-anne",
        "relationship EpisodeOfCare/eoc-anne-laegehuset",
    )
    .await;

    // Bo, named in every spelling a FHIR server resolves.
    let identifier = format!("{CPR}|{BO_CPR}");
    for path in [
        "/fhir/Patient/pat-bo".to_owned(),
        "/fhir/Patient/pat-bo/_history".to_owned(),
        "/fhir/Observation?patient=pat-bo".to_owned(),
        "/fhir/Observation?patient=Patient/pat-bo".to_owned(),
        "/fhir/Observation?subject:Patient=pat-bo".to_owned(),
        "/fhir/Observation?subject=Patient%2Fpat-bo".to_owned(),
        format!(
            "/fhir/Observation?subject={}/Patient/pat-bo",
            gateway.base_url
        ),
        "/fhir/Patient/pat-bo/Observation".to_owned(),
        "/fhir/Patient/pat-bo/$everything".to_owned(),
        "/fhir/Patient?_id=pat-bo".to_owned(),
        format!("/fhir/Patient?identifier={identifier}"),
        "/fhir/Observation?patient=pat-anne,pat-bo".to_owned(),
    ] {
        let answer = client.get(&path, Some(&token)).await.unwrap();
        assert_eq!(
            denial(&answer),
            (403, "relationship-required".into()),
            "{path}"
        );
    }

    // One request may not make the gateway look up evidence for hundreds of patients.
    let many: Vec<String> = (0..201).map(|n| format!("pat-{n}")).collect();
    let answer = client
        .get(
            &format!("/fhir/Observation?patient={}", many.join(",")),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "too-many-patients".into()));

    // A resource of Bo's asked for by its own id: as if it did not exist.
    let answer = client
        .get("/fhir/Observation/obs-bo-bp", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (404, "not-found".into()));

    // A search that names nobody: Anne's entries only, no total, no notice; a count that
    // names nobody would count Bo's, so it is refused for everyone bound alike.
    let answer = client
        .get("/fhir/Observation?_count=100", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    let subjects: Vec<&str> = body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["subject"]["reference"].as_str())
        .collect();
    assert!(subjects.contains(&"Patient/pat-anne"), "{subjects:?}");
    assert!(
        subjects.iter().all(|s| *s == "Patient/pat-anne"),
        "{subjects:?}"
    );
    assert!(body.get("total").is_none(), "{body}");
    let answer = client
        .get("/fhir/Observation?_summary=count", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "count-not-pinned".into()));
    let answer = client
        .get("/fhir/Patient?name=Jensen", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answer.json()["entry"]
            .as_array()
            .is_none_or(std::vec::Vec::is_empty),
        "{}",
        answer.text()
    );

    // What a withheld match brought along goes with it: Anne's encounter and Dr. Kjær, not
    // the nurse who saw Bo and Carla.
    let answer = client
        .get(
            "/fhir/Encounter?_include=Encounter:participant&_count=100",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let found: Vec<String> = answer.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        found.contains(&"Encounter/enc-anne-1".to_owned()),
        "{found:?}"
    );
    assert!(
        found.contains(&"Practitioner/prac-ns363".to_owned()),
        "{found:?}"
    );
    assert!(
        !found.iter().any(|f| f == "Practitioner/prac-nurse-5166"
            || f.starts_with("Encounter/enc-bo")
            || f.starts_with("Encounter/enc-carla")),
        "{found:?}"
    );

    // A batch, entry by entry: Anne's answered, Bo's refused.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/pat-anne" } },
        { "request": { "method": "GET", "url": "Observation?patient=pat-bo" } }
    ]});
    let answer = send_batch(&client, &token, batch).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let statuses: Vec<Value> = answer.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].clone())
        .collect();
    assert!(
        statuses[0].as_str().unwrap().starts_with("200"),
        "{statuses:?}"
    );
    assert!(
        statuses[1].as_str().unwrap().starts_with("403"),
        "{statuses:?}"
    );

    // Writes that would put data in Bo's record: refused before they reach the backend.
    let moved = json!({ "resourceType": "Observation", "id": "obs-anne-bp", "status": "final",
        "code": { "text": "blodtryk" }, "subject": { "reference": "Patient/pat-bo" } });
    let answer = client
        .send(request(
            Method::PUT,
            "/fhir/Observation/obs-anne-bp",
            Some(&token),
            Some(moved),
        ))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "relationship-required".into()));
    let (_, still) = crate::support::backend_get("Observation/obs-anne-bp").await;
    assert_eq!(still["subject"]["reference"], "Patient/pat-anne");
    let created = json!({ "resourceType": "Observation", "status": "final",
        "code": { "text": "puls" }, "subject": { "reference": "Patient/pat-bo" } });
    let answer = client
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(created),
        ))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "relationship-required".into()));

    // A launch context is no relationship: a professional with Bo's record open is bound like
    // any other token.
    let launched = gateway.token(json!({
        "scope": "openid fhirUser launch/patient user/*.rs", "patient": "pat-bo",
        "authorization_id": "NS363", "role": "7170", "fhirUser": "Practitioner/prac-ns363",
    }));
    for path in ["/fhir/Patient/pat-bo", "/fhir/Observation?patient=pat-bo"] {
        let answer = client.get(path, Some(&launched)).await.unwrap();
        assert_eq!(
            denial(&answer),
            (403, "relationship-required".into()),
            "{path}"
        );
    }

    // Not bound: another role, a system, the citizen's own token.
    let nurse = gateway.token(json!({ "scope": "user/*.rs", "authorization_id": "ZZ4Q1",
        "role": "5166", "fhirUser": "Practitioner/prac-nurse-5166" }));
    let system = gateway.token(json!({ "scope": "system/*.rs", "sub": "journalsystem" }));
    let bo = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-bo",
        "fhirUser": "Patient/pat-bo", "role": "7170" }));
    for token in [&nurse, &system, &bo] {
        let answer = client
            .get("/fhir/Patient/pat-bo", Some(token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let log = metrics(&gateway).await;
    assert!(
        metric_value(
            &log,
            "portvagt_relationship_checks_total{outcome=\"refused\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{log}"
    );
}

#[tokio::test]
async fn vaerdispring_lets_the_access_through_marked_and_counted() {
    let gateway = fhir_source(None);
    let client = gateway.client();

    // EMERGENCY without a reason lifts nothing.
    let emergency = kjaer(&gateway, "EMERGENCY");
    let answer = client
        .get("/fhir/Patient/pat-bo", Some(&emergency))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "break-glass-reason-required".into()));
    // Zero-width and spaces are no reason either.
    let mut blank = request(Method::GET, "/fhir/Patient/pat-bo", Some(&emergency), None);
    blank.headers_mut().insert(
        "x-portvagt-break-glass-reason",
        http::HeaderValue::from_static("   "),
    );
    let answer = client.send(blank).await.unwrap();
    assert_eq!(denial(&answer), (403, "break-glass-reason-required".into()));

    let mut with_reason = request(
        Method::GET,
        "/fhir/Observation?patient=pat-bo",
        Some(&emergency),
        None,
    );
    with_reason.headers_mut().insert(
        "x-portvagt-break-glass-reason",
        http::HeaderValue::from_bytes("bevidstløs på skadestuen".as_bytes()).unwrap(),
    );
    let answer = client.send(with_reason).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!answer.json()["entry"].as_array().unwrap().is_empty());

    // Værdispring is a look-up: a write into Bo's record (which could make the evidence that
    // ends the follow-up) stays refused.
    let emergency_writer = gateway.token(json!({
        "scope": "user/*.rs user/EpisodeOfCare.c user/Observation.c",
        "authorization_id": "NS363", "role": "7170", "fhirUser": "Practitioner/prac-ns363",
        "purpose_of_use": "EMERGENCY",
    }));
    let episode = json!({ "resourceType": "EpisodeOfCare", "status": "active",
        "patient": { "reference": "Patient/pat-bo" },
        "careManager": { "reference": "Practitioner/prac-ns363" } });
    let mut write = request(
        Method::POST,
        "/fhir/EpisodeOfCare",
        Some(&emergency_writer),
        Some(episode),
    );
    write.headers_mut().insert(
        "x-portvagt-break-glass-reason",
        http::HeaderValue::from_static("akut"),
    );
    let written = client.send(write).await.unwrap();
    assert_eq!(denial(&written), (403, "relationship-required".into()));

    // The event in Bo's log: værdispring, break-the-glass, the reason.
    let events = gateway.audit_events_for(&request_id(&answer));
    let bo_event = events
        .iter()
        .find(|event| event["entity"][0]["what"]["reference"] == "Patient/pat-bo")
        .unwrap_or_else(|| panic!("{events:?}"));
    let details = &bo_event["entity"][0]["detail"];
    assert!(
        details
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "access-basis" && d["valueString"] == "vaerdispring"),
        "{details}"
    );
    assert!(
        details
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["type"] == "break-glass-reason"
                && d["valueString"] == "bevidstløs på skadestuen"),
        "{details}"
    );
    assert!(
        bo_event["purposeOfEvent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["coding"][0]["code"] == "BTG"),
        "{bo_event}"
    );
    let log = metrics(&gateway).await;
    assert_eq!(
        metric_value(
            &log,
            "portvagt_relationship_checks_total{outcome=\"vaerdispring\"}"
        ),
        Some(1.0),
        "{log}"
    );

    // Nor in a batch whose read entry of Bo's record was let through by værdispring.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/pat-bo" } },
        { "request": { "method": "POST", "url": "Observation" },
          "resource": { "resourceType": "Observation", "status": "final", "code": { "text": "akut" },
                        "subject": { "reference": "Patient/pat-bo" } } }
    ]});
    let mut batched = request(Method::POST, "/fhir", Some(&emergency_writer), Some(batch));
    batched.headers_mut().insert(
        "x-portvagt-break-glass-reason",
        http::HeaderValue::from_static("akut"),
    );
    let batched = client.send(batched).await.unwrap();
    assert_eq!(batched.status, 200, "{}", batched.text());
    let statuses: Vec<String> = batched.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(statuses[0].starts_with("200"), "{statuses:?}");
    assert!(statuses[1].starts_with("403"), "{statuses:?}");
}

#[tokio::test]
async fn a_relationship_begun_in_the_backend_counts_within_the_negative_cache_time() {
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let gateway = fhir_source(Some(&backend));
    let client = gateway.client();
    let token = kjaer(&gateway, "TREATMENT");
    let answer = client
        .get("/fhir/Patient/pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "relationship-required".into()));

    // A cancelled encounter is no relationship; one in progress, naming her role, is.
    let encounter = |status: &str| {
        json!({ "resourceType": "Encounter", "status": status,
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
            "subject": { "reference": "Patient/pat-bo" },
            "participant": [{ "individual": { "reference": "PractitionerRole/role-ns363-laegehuset" } }] })
    };
    let cancelled = backend_send(
        backend.base_url(),
        Method::POST,
        "Encounter",
        Some(encounter("cancelled")),
    )
    .await;
    assert_eq!(cancelled["resourceType"], "Encounter", "{cancelled}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = client
        .get("/fhir/Patient/pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "relationship-required".into()));

    let ongoing = backend_send(
        backend.base_url(),
        Method::POST,
        "Encounter",
        Some(encounter("in-progress")),
    )
    .await;
    let id = ongoing["id"].as_str().unwrap().to_owned();
    // Who she is now, not who she was or whose system she uses: a role she no longer holds,
    // and the organisation owning the client certificate (CVR), are no relationship.
    let former = backend_send(
        backend.base_url(),
        Method::POST,
        "PractitionerRole",
        Some(json!({ "resourceType": "PractitionerRole", "active": false,
            "practitioner": { "reference": "Practitioner/prac-ns363" } })),
    )
    .await;
    let certificate_owner = backend_send(
        backend.base_url(),
        Method::POST,
        "Organization",
        Some(
            json!({ "resourceType": "Organization", "name": "Systemleverandøren",
            "identifier": [{ "system": "http://cvr.dk", "value": portvagt_certs::DEMO_CVR }] }),
        ),
    )
    .await;
    for (element, reference) in [
        (
            "careManager",
            format!("PractitionerRole/{}", former["id"].as_str().unwrap()),
        ),
        (
            "managingOrganization",
            format!("Organization/{}", certificate_owner["id"].as_str().unwrap()),
        ),
    ] {
        let mut episode = json!({ "resourceType": "EpisodeOfCare", "status": "active",
            "patient": { "reference": "Patient/pat-carla" } });
        episode[element] = json!({ "reference": reference });
        backend_send(
            backend.base_url(),
            Method::POST,
            "EpisodeOfCare",
            Some(episode),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = client
        .get("/fhir/Patient/pat-carla", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (403, "relationship-required".into()));
    read_on_basis(
        &gateway,
        &token,
        "pat-bo",
        &format!("relationship Encounter/{id}"),
    )
    .await;
}

/// A gateway asking the relation service beside `backend` (or at `url`).
fn http_source(backend: &BackendProcess, url: Option<String>) -> Gateway {
    let origin = backend.base_url().trim_end_matches("/fhir/R4").to_owned();
    let url = url.unwrap_or_else(|| format!("{origin}/_relations"));
    Gateway::start_with(Options {
        backend_url: Some(backend.base_url().to_owned()),
        extra_config: format!(
            "[relationship]\nroles = [\"7170\"]\nsource = \"http\"\n\
             cache_ttl = \"1s\"\nnegative_cache_ttl = \"1s\"\n\n\
             [relationship.service]\nurl = \"{url}\"\nresponse_timeout = \"1s\"\n\
             circuit_failures = 0\nretries = 0\n"
        ),
        ..Options::default()
    })
}

/// Steers the relation service: its table of relationships and how it behaves.
async fn relation_service(backend: &BackendProcess, mode: &str, delay_ms: u64) -> u64 {
    let origin = backend.base_url().trim_end_matches("/fhir/R4").to_owned();
    let table = json!({
        "relations": [{ "patient": "urn:oid:1.2.208.176.1.2|1111111118",
            "professional": "https://autregweb.sst.dk|NS363", "basis": "GP list" }],
        "mode": mode, "delay_ms": delay_ms,
    });
    let client =
        portvagt::https::HttpsClient::allowing_plain_http(None, None, Duration::from_secs(10))
            .unwrap();
    let put = http::Request::put(format!("{origin}/_relations/_table"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            table.to_string(),
        )))
        .unwrap();
    client.send(put).await.unwrap();
    calls(&origin).await
}

async fn calls(origin: &str) -> u64 {
    let client =
        portvagt::https::HttpsClient::allowing_plain_http(None, None, Duration::from_secs(10))
            .unwrap();
    let get = http::Request::get(format!("{origin}/_relations/_calls"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let body = client.send(get).await.unwrap().into_body();
    serde_json::from_slice::<Value>(&body).unwrap()["calls"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn the_relation_service_is_asked_cached_and_refused_when_down_slow_or_wrong() {
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let origin = backend.base_url().trim_end_matches("/fhir/R4").to_owned();
    relation_service(&backend, "normal", 0).await;
    let gateway = http_source(&backend, None);
    let client = gateway.client();
    let token = kjaer(&gateway, "TREATMENT");

    read_on_basis(&gateway, &token, "pat-anne", "relationship GP list").await;
    let bo = client
        .get("/fhir/Patient/pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&bo), (403, "relationship-required".into()));
    // Within the cache time the service is not asked again.
    let asked = calls(&origin).await;
    let again = client
        .get("/fhir/Observation?patient=pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(calls(&origin).await, asked);

    for (mode, delay) in [("down", 0), ("slow", 3000), ("wrong", 0)] {
        relation_service(&backend, mode, delay).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let started = std::time::Instant::now();
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(
            denial(&answer),
            (503, "relationship-unavailable".into()),
            "{mode}"
        );
        assert!(
            answer.headers.contains_key(http::header::RETRY_AFTER),
            "{mode}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{mode}: not refused within the service's timeout"
        );
    }
    let log = metrics(&gateway).await;
    assert_eq!(
        metric_value(
            &log,
            "portvagt_relationship_checks_total{outcome=\"unavailable\"}"
        ),
        Some(3.0),
        "{log}"
    );

    // Nothing listening where the service should be: refused the same way.
    let nowhere = http_source(
        &backend,
        Some(format!("http://127.0.0.1:{}/_relations", free_port())),
    );
    let token = kjaer(&nowhere, "TREATMENT");
    let answer = nowhere
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(denial(&answer), (503, "relationship-unavailable".into()));
}
