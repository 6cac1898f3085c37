//! The audit trail end to end: BALP AuditEvents in the spool before the answer arrives, one per
//! patient for searches, refusals recorded too, events the reference FHIR server accepts as R4
//! AuditEvents, a chain `portvagt audit verify` confirms, and 503 when the spool cannot be
//! written (a real write failure: the file size limit of the process).

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use std::sync::Arc;

use crate::support::{
    Answer, Gateway, ISSUER, MARKER_SYSTEM, Options, Repository, backend_exchange_bytes,
    backend_url, metric_value,
};

fn request_id(answer: &Answer) -> String {
    answer.headers["x-request-id"].to_str().unwrap().to_owned()
}

fn agent<'a>(event: &'a Value, code: &str) -> Option<&'a Value> {
    event["agent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["type"]["coding"][0]["code"] == code)
}

fn entity_references(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|entity| entity["what"]["reference"].as_str().map(str::to_owned))
        .collect()
}

/// A resource a JavaScript server stores and answers, but a strict JSON reader cannot read: a
/// lone surrogate escape in the display text of its subject. Created straight at `backend` (a
/// backend of the test's own: every search of Anne's observations in the shared one would fail
/// on it); its id.
async fn unreadable_observation(backend: &str) -> String {
    let marker = format!("unreadable-{}", std::process::id());
    let body = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"pulse"}},
            "identifier":[{{"system":"{MARKER_SYSTEM}","value":"{marker}"}}],
            "subject":{{"reference":"Patient/pat-anne","display":"Anne \ud800"}}}}"#
    );
    let (status, created) =
        backend_exchange_bytes(backend, http::Method::POST, "Observation", &[], body).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
    let text = String::from_utf8_lossy(&created);
    assert!(
        text.contains(r"\ud800"),
        "the backend keeps the escape: {text}"
    );
    let at = text.find(r#""id":""#).expect("an id") + 6;
    text[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn an_answer_that_cannot_be_read_does_not_leave_unrecorded() {
    let backend =
        portvagt::demo::BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let gateway = Gateway::start_with(Options {
        backend_url: Some(backend.base_url().to_owned()),
        ..Options::default()
    });
    let id = unreadable_observation(backend.base_url()).await;
    let token = gateway.token(json!({ "scope": "user/*.rs", "role": "7170" }));
    // Whose data it is cannot be read from it: it does not leave without her in the record.
    for path in [
        format!("/fhir/Observation/{id}"),
        format!("/fhir/Observation?_id={id}"),
    ] {
        let answer = gateway.client().get(&path, Some(&token)).await.unwrap();
        assert_eq!(answer.status, 502, "{path}: {}", answer.text());
        assert_eq!(answer.detail_code(), "backend-answer-unreadable", "{path}");
        assert!(!answer.text().contains("ud800"), "{}", answer.text());
        let events = gateway.audit_events_for(&request_id(&answer));
        assert_eq!(events.len(), 1, "{path}: {events:#?}");
        assert_eq!(events[0]["outcome"], "8", "{path}");
    }
    // A write to it is refused before it is made: what it changes, and whose that is, cannot
    // be read first.
    let writer = gateway.token(json!({ "scope": "user/*.cruds", "role": "7170" }));
    let patch = crate::support::json_patch(
        &format!("/fhir/Observation/{id}"),
        &writer,
        &json!([{ "op": "replace", "path": "/status", "value": "amended" }]).to_string(),
        &[],
    );
    let answer = gateway.client().send(patch).await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.detail_code(), "lookup-failed");
    let (_, stored) = backend_exchange_bytes(
        backend.base_url(),
        http::Method::GET,
        &format!("Observation/{id}"),
        &[],
        String::new(),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&stored).contains(r#""status":"final""#),
        "{}",
        String::from_utf8_lossy(&stored)
    );
}

#[tokio::test]
async fn a_read_is_recorded_before_its_answer_with_who_what_and_whose() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({
        "scope": "user/*.rs", "role": "7170", "purpose_of_use": "TREATMENT",
        "name": "Mette Kjær", "jti": "token-1", "client_id": "journalsystem",
    }));
    let answer = gateway
        .client()
        .get("/fhir/Observation/obs-bo-bp", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Durable before the answer: no waiting here.
    let events = gateway.audit_events_for(&request_id(&answer));
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(event["type"]["code"], "rest");
    assert_eq!(event["subtype"][0]["code"], "read");
    assert_eq!(event["action"], "R");
    assert_eq!(event["outcome"], "0");
    assert_eq!(
        entity_references(event),
        vec!["Patient/pat-bo", "Observation/obs-bo-bp"]
    );
    let user = agent(event, "humanuser").expect("a user agent");
    assert_eq!(user["requestor"], true);
    assert_eq!(user["who"]["identifier"]["system"], ISSUER);
    assert_eq!(user["who"]["identifier"]["value"], "mette.kjaer");
    assert_eq!(user["name"], "Mette Kjær");
    assert_eq!(user["policy"][0], "urn:ietf:params:oauth:jti:token-1");
    assert_eq!(user["role"][0]["coding"][0]["code"], "7170");
    assert_eq!(user["purposeOfUse"][0]["coding"][0]["code"], "TREAT");
    let client = agent(event, "110153").expect("the client agent");
    assert_eq!(client["who"]["identifier"]["value"], "journalsystem");
    assert_eq!(client["network"]["address"], "127.0.0.1");
    assert!(
        client["altId"]
            .as_str()
            .unwrap()
            .contains("Journalsystem Demo")
    );
    let organisation = agent(event, "PROV").expect("the organisation (from the certificate)");
    assert_eq!(organisation["who"]["identifier"]["value"], "12345678");
    assert_eq!(organisation["who"]["display"], "Region Demo Sundhed");
    assert!(
        agent(event, "110152").is_some(),
        "the gateway as destination"
    );
    assert_eq!(event["source"]["site"], gateway.base_url.as_str());
}

#[tokio::test]
async fn a_search_over_several_patients_is_recorded_once_for_each() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/Observation.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation?_count=100", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let in_answer: std::collections::BTreeSet<String> = answer.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["subject"]["reference"].as_str())
        .map(|r| r.trim_start_matches("Patient/").to_owned())
        .collect();
    assert!(in_answer.len() >= 2, "{in_answer:?}");
    let events = gateway.audit_events_for(&request_id(&answer));
    let patients: std::collections::BTreeSet<String> = events
        .iter()
        .map(|event| {
            let references = entity_references(event);
            assert_eq!(references.len(), 1, "one patient per event: {references:?}");
            references[0].trim_start_matches("Patient/").to_owned()
        })
        .collect();
    assert_eq!(patients, in_answer);
    assert_eq!(events.len(), in_answer.len());
    for event in &events {
        assert_eq!(event["subtype"][0]["code"], "search-type");
        assert_eq!(event["action"], "E");
        let query = event["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entity| entity["role"]["code"] == "24")
            .expect("the query entity");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(query["query"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, b"/fhir/Observation?_count=100");
    }
}

#[tokio::test]
async fn refusals_are_recorded_with_their_reason() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let patient = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-anne" }));
    let denied = client
        .get("/fhir/Patient/pat-bo", Some(&patient))
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    let events = gateway.audit_events_for(&request_id(&denied));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["outcome"], "4");
    assert_eq!(events[0]["outcomeDesc"], "403 outside-compartment");
    assert_eq!(
        entity_references(&events[0]),
        vec!["Patient/pat-bo", "Patient/pat-bo"]
    );

    let anonymous = client.get("/fhir/Patient/pat-bo", None).await.unwrap();
    assert_eq!(anonymous.status, 401);
    let events = gateway.audit_events_for(&request_id(&anonymous));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["outcomeDesc"], "401 missing-token");
    assert!(agent(&events[0], "humanuser").is_none());
    assert_eq!(agent(&events[0], "110153").unwrap()["requestor"], true);
}

/// A plain-HTTP POST to the reference backend.
async fn backend_post(path: &str, body: &Value) -> (u16, Value) {
    let (status, answer) =
        crate::support::backend_exchange(backend_url(), http::Method::POST, path, Some(body)).await;
    (status.as_u16(), answer)
}

#[tokio::test]
async fn the_events_are_valid_r4_audit_events_and_the_chain_verifies() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let token = gateway.token(json!({
        "scope": "user/*.rs", "role": "7170", "purpose_of_use": "EMERGENCY", "jti": "j",
    }));
    for path in [
        "/fhir/Patient/pat-anne",
        "/fhir/Condition?patient=pat-bo",
        "/fhir/Patient/pat-anne/$everything",
        "/fhir/metadata",
    ] {
        client.get(path, Some(&token)).await.unwrap();
    }
    client.get("/fhir/Patient/pat-anne", None).await.unwrap();
    let events = gateway.audit_events();
    assert!(events.len() >= 5, "{}", events.len());
    // The reference server validates what it stores against the R4 definitions.
    for event in &events {
        let (status, body) = backend_post("AuditEvent", event).await;
        assert_eq!(status, 201, "{event:#}\n{body:#}");
    }
    let (status, _) = backend_post(
        "AuditEvent",
        &json!({ "resourceType": "AuditEvent", "recorded": "not a date", "agent": [] }),
    )
    .await;
    assert_eq!(status, 400, "the backend does validate AuditEvents");

    let (ok, stdout) = gateway.verify_audit();
    assert!(ok, "{stdout}");
    assert!(
        stdout.starts_with(&format!("OK: {} records", events.len())),
        "{stdout}"
    );
    assert!(stdout.contains("the gateway is writing"), "{stdout}");
}

/// A gateway whose process may not grow a file beyond a few KiB (RLIMIT_FSIZE, with SIGXFSZ
/// ignored so a write fails with EFBIG instead of killing it): the spool soon cannot be written.
fn gateway_with_small_disk(failure_mode: &str) -> Gateway {
    Gateway::start_with(Options {
        shell_prefix: Some("trap '' XFSZ; ulimit -f 16;".into()),
        audit_extra: format!("failure_mode = \"{failure_mode}\""),
        ..Options::default()
    })
}

#[tokio::test]
async fn when_the_spool_cannot_be_written_the_access_is_refused() {
    let gateway = gateway_with_small_disk("closed");
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        statuses.push(answer.status.as_u16());
        if answer.status == 503 {
            assert_eq!(answer.detail_code(), "audit-unavailable");
            assert_eq!(answer.headers["retry-after"], "5");
            break;
        }
        assert_eq!(answer.status, 200);
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    // Every answer that was given has its record, and the chain is intact.
    let (_, stdout) = gateway.verify_audit();
    assert!(
        stdout.starts_with(&format!("OK: {} records", statuses.len() - 1)),
        "{stdout}"
    );
}

#[tokio::test]
async fn failing_open_lets_the_access_through_and_counts_the_lost_record() {
    let gateway = gateway_with_small_disk("open");
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    for _ in 0..40 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    let metrics = client.get("/metrics", None).await.unwrap().text();
    let lost = metric_value(&metrics, "portvagt_audit_records_lost_total").unwrap();
    assert!(lost >= 1.0, "{metrics}");
    assert!(gateway.raw_log().contains("AUDIT RECORD LOST"));
}

fn request_ids(events: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = events
        .iter()
        .flat_map(|event| {
            event["entity"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|entity| entity["type"]["code"] == "XrequestId")
                .map(|entity| {
                    entity["what"]["identifier"]["value"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn the_shipper_delivers_everything_once_the_repository_is_up_and_remembers_across_restarts() {
    // The repository is down at first: the port is chosen, nothing listens yet.
    let port = crate::support::free_port();
    let url = format!("https://127.0.0.1:{port}/fhir/R4");
    let pki = Arc::new(portvagt_certs::DevPki::generate().unwrap());
    let mut gateway = Gateway::start_with(Options {
        pki: Some(pki.clone()),
        audit_extra: Repository::ship(&url, "batch_size = 3"),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    for _ in 0..5 {
        let answer = gateway
            .client()
            .get("/fhir/Patient/pat-carla", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    let mut lag = None;
    for _ in 0..40 {
        let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
        let failures = metric_value(&metrics, "portvagt_audit_ship_failures_total").unwrap_or(0.0);
        lag = metric_value(&metrics, "portvagt_audit_ship_lag_records");
        if failures >= 1.0 && lag.is_some_and(|lag| lag >= 5.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(lag.is_some_and(|lag| lag >= 5.0), "lag {lag:?}");

    let repository = Repository::start_with(pki, port);
    let spooled = gateway.audit_events();
    let mut shipped = shipped_events_within(&repository, spooled.len(), 30).await;
    assert_eq!(request_ids(&shipped), request_ids(&spooled));

    // A hard restart: what was acknowledged is not sent again; what is new is.
    gateway.restart();
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-carla", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let spooled = gateway.audit_events();
    for _ in 0..100 {
        shipped = repository.events().await;
        if shipped.len() >= spooled.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let shipped = repository.events().await;
    assert_eq!(request_ids(&shipped), request_ids(&spooled));
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_audit_ship_lag_records"),
        Some(0.0)
    );
}

/// The reference repository (Medplum) takes at most 50 updates in one transaction, fewer than
/// the default `batch_size`: once more events wait than it takes, the shipper sends smaller
/// transactions instead of the same refused one forever.
#[tokio::test]
async fn a_repository_that_refuses_a_transaction_as_too_large_gets_smaller_ones() {
    let port = crate::support::free_port();
    let url = format!("https://127.0.0.1:{port}/fhir/R4");
    let pki = Arc::new(portvagt_certs::DevPki::generate().unwrap());
    let gateway = Gateway::start_with(Options {
        pki: Some(pki.clone()),
        audit_extra: Repository::ship(&url, ""),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    // While the repository is down, 70 events wait in the spool.
    for _ in 0..70 {
        read_anne(&gateway, &token).await;
    }
    let repository = Repository::start_with(pki, port);
    let spooled = gateway.audit_events();
    assert!(spooled.len() >= 70, "{}", spooled.len());
    let shipped = shipped_events_within(&repository, spooled.len(), 30).await;
    assert_eq!(request_ids(&shipped), request_ids(&spooled));
    // Below the repository's limit now, and said so.
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    let size = metric_value(&metrics, "portvagt_audit_ship_batch_size").unwrap();
    assert!((1.0..=50.0).contains(&size), "{size}");
}

#[tokio::test]
async fn shipped_segments_are_deleted_and_what_remains_still_verifies() {
    let repository = Repository::start();
    // Segments of about one record each, deleted as soon as they are shipped.
    let mut gateway = Gateway::start_with(Options {
        audit_extra: format!(
            "segment_bytes = 2048\n{}",
            Repository::ship(repository.base_url(), "keep_shipped = \"0s\"")
        ),
        pki: Some(repository.pki.clone()),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let mut answered = Vec::new();
    for _ in 0..6 {
        let answer = gateway
            .client()
            .get("/fhir/Patient/pat-carla", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        answered.push(answer.headers["x-request-id"].to_str().unwrap().to_owned());
    }
    let mut deleted = 0.0;
    for _ in 0..100 {
        let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
        deleted = metric_value(&metrics, "portvagt_audit_segments_deleted_total").unwrap_or(0.0);
        let lag = metric_value(&metrics, "portvagt_audit_ship_lag_records");
        if deleted >= 5.0 && lag == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(deleted >= 5.0, "{deleted} segments deleted");
    // Everything is in the repository; the spool keeps only the segment being written.
    let shipped = request_ids(&repository.events().await);
    for id in &answered {
        assert!(shipped.contains(id), "{id} not shipped: {shipped:?}");
    }
    let spool = gateway.dir.path().join("audit");
    let keys = gateway.seal_keys();
    let check = || portvagt::audit::verify::Check {
        keys: Some(&keys),
        now: jsonwebtoken::get_current_timestamp(),
    };
    // What was deleted, a prune seal allowed: the spool still proves itself complete.
    let report = portvagt::audit::verify::verify(&spool, check()).unwrap();
    assert!(report.records < 6, "{report:?}");
    assert!(report.first_seq > 1, "{report:?}");
    assert!(
        matches!(report.end, portvagt::audit::verify::End::Live(_)),
        "{report:?}"
    );

    // After a restart the chain goes on from what was kept.
    gateway.restart();
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-carla", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let after = portvagt::audit::verify::verify(&spool, check()).unwrap();
    assert_ne!(after.head, report.head);
    // The restart after a kill is on record.
    assert!(!after.unclean_restarts.is_empty(), "{after:?}");
}

#[tokio::test]
async fn a_citizen_reads_who_looked_at_their_record_and_nothing_else() {
    let repository = Repository::start();
    let gateway = Gateway::start_with(repository.gateway_options(""));
    let client = gateway.client();
    let physician = gateway.token(json!({
        "scope": "user/*.rs", "name": "Mette Kjær", "role": "7170",
        "purpose_of_use": "TREATMENT", "authorization_id": "NS363",
    }));
    let narrow = gateway.token(json!({ "scope": "user/Observation.rs", "name": "Ole Nielsen" }));
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&physician))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&narrow))
            .await
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        client
            .get("/fhir/Patient/pat-bo", Some(&physician))
            .await
            .unwrap()
            .status,
        200
    );
    let spooled = gateway.audit_events().len();
    for _ in 0..100 {
        if repository.events().await.len() >= spooled {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let anne = gateway.token(json!({
        "scope": "patient/AuditEvent.rs", "patient": "pat-anne", "fhirUser": "Patient/pat-anne",
    }));
    let answer = client.get("/fhir/AuditEvent", Some(&anne)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let text = answer.text();
    for internal in [
        "network",
        "policy",
        "XrequestId",
        "\"query\"",
        "altId",
        "serialNumber",
    ] {
        assert!(
            !text.contains(internal),
            "{internal} shown to the citizen: {text}"
        );
    }
    let events: Vec<Value> = answer.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["resource"].clone())
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    for event in &events {
        assert!(
            entity_references(event).contains(&"Patient/pat-anne".to_owned()),
            "only Anne's: {event}"
        );
    }
    let recorded: Vec<&str> = events
        .iter()
        .map(|e| e["recorded"].as_str().unwrap())
        .collect();
    let mut newest_first = recorded.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(recorded, newest_first);
    // Newest first: the refused attempt, then the physician's read, named with role.
    assert_eq!(events[0]["outcome"], "4");
    let who = agent(&events[1], "humanuser").unwrap();
    assert_eq!(who["name"], "Mette Kjær");
    assert_eq!(who["role"][0]["coding"][0]["code"], "7170");
    assert_eq!(who["purposeOfUse"][0]["coding"][0]["code"], "TREAT");

    let others = client
        .get("/fhir/AuditEvent?patient=pat-bo", Some(&anne))
        .await
        .unwrap();
    assert_eq!(others.status, 403);
    let practitioner = client
        .get("/fhir/AuditEvent?patient=pat-anne", Some(&physician))
        .await
        .unwrap();
    assert_eq!(practitioner.status, 403);
    assert_eq!(practitioner.detail_code(), "audit-log-restricted");
}

#[tokio::test]
async fn no_answered_request_loses_its_record_when_the_gateway_is_killed_under_load() {
    let mut gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let mut answered: Vec<String> = Vec::new();
    for _round in 0..4 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let client = gateway.client();
            let token = token.clone();
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                // Until the gateway dies under it.
                while let Ok(answer) = client.get("/fhir/Patient/pat-anne", Some(&token)).await {
                    if answer.status.is_success() {
                        ids.push(request_id(&answer));
                    }
                }
                ids
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        // SIGKILL mid-flight, then a fresh process on the same spool.
        gateway.restart();
        for task in tasks {
            answered.extend(task.await.unwrap());
        }
    }
    assert!(answered.len() > 50, "too little load: {}", answered.len());

    let mut recorded: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for id in request_ids(&gateway.audit_events()) {
        *recorded.entry(id).or_default() += 1;
    }
    for id in &answered {
        assert_eq!(recorded.get(id), Some(&1), "request {id} answered 2xx");
    }
    // Every kill is on record, and fails the verification until accepted.
    let (ok, stdout) = gateway.verify_audit();
    let restarts = Gateway::unclean_restarts(&stdout);
    assert!(
        !ok && restarts.len() == 4,
        "the kills are on record: {stdout}"
    );
    let (ok, stdout) = gateway.verify_audit_accepting(&restarts);
    assert!(ok, "{stdout}");
}

#[tokio::test]
async fn a_request_that_times_out_is_recorded() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[limits]\nrequest_timeout = \"1ms\"\n".into(),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation?_count=100", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 504);
    let events = gateway.audit_events_for(&request_id(&answer));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["outcomeDesc"], "504 request-timeout");
}

#[tokio::test]
async fn a_practitioner_launched_in_a_patients_context_cannot_read_their_log() {
    let gateway = Gateway::start();
    let practitioner = gateway.token(json!({
        "scope": "patient/*.rs", "patient": "pat-anne", "fhirUser": "Practitioner/prac-ns363",
    }));
    let answer = gateway
        .client()
        .get("/fhir/AuditEvent", Some(&practitioner))
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(answer.detail_code(), "audit-log-restricted");
}

#[tokio::test]
async fn a_clean_stop_closes_the_trail_and_a_kill_or_a_cut_leaves_it_incomplete() {
    let mut gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    read_anne(&gateway, &token).await;
    let (ok, stdout) = gateway.verify_audit();
    assert!(ok && stdout.contains("the gateway is writing"), "{stdout}");

    // SIGTERM: the answers are out, the chain ends with a close seal.
    assert!(gateway.terminate().success());
    let (ok, stdout) = gateway.verify_audit();
    assert!(ok && stdout.contains("closed cleanly"), "{stdout}");
    let spool = gateway.dir.path().join("audit");
    let segment = spool.join("segment-0000000001.jsonl");
    let closed = std::fs::read_to_string(&segment).unwrap();

    // The close and the last record cut off while the gateway is down: found at once.
    let lines: Vec<&str> = closed.lines().collect();
    std::fs::write(&segment, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let (ok, stdout) = gateway.verify_audit();
    assert!(!ok && stdout.starts_with("INCOMPLETE"), "{stdout}");
    std::fs::write(&segment, &closed).unwrap();

    // A kill: no close; verified while it is down, the trail is incomplete; started again,
    // the restart records that the run before did not close.
    gateway.restart();
    gateway.kill();
    let (ok, stdout) = gateway.verify_audit();
    assert!(!ok && stdout.starts_with("INCOMPLETE"), "{stdout}");
    gateway.restart();
    // Asked to stop the moment it listens: still a clean stop, the trail closed.
    assert!(gateway.terminate().success());
    let (ok, stdout) = gateway.verify_audit();
    let restarts = Gateway::unclean_restarts(&stdout);
    assert!(!ok && restarts.len() == 1, "{stdout}");
    let (ok, stdout) = gateway.verify_audit_accepting(&restarts);
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("closed cleanly") && stdout.contains("ended without a close"),
        "{stdout}"
    );
}

#[tokio::test]
async fn only_the_gateway_writes_to_the_audit_repository() {
    let repository = Repository::start();
    let gateway = Gateway::start_with(repository.gateway_options(""));
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    read_anne(&gateway, &token).await;
    let shipped = shipped_events(&repository, 1).await;
    let id = shipped[0]["id"]
        .as_str()
        .expect("the gateway's shipper wrote")
        .to_owned();

    // Nobody else adds, changes or deletes an event: no certificate, an application's
    // organisation certificate, an employee's.
    let pki = &repository.pki;
    let forged = json!({ "resourceType": "AuditEvent", "id": id, "recorded": "2026-01-01T00:00:00Z",
        "type": { "code": "rest" }, "agent": [], "source": { "observer": { "display": "x" } } });
    for cert in [None, Some(&pki.client), Some(&pki.employee)] {
        let client = repository.client(cert);
        for (method, path, body) in [
            ("PUT", format!("AuditEvent/{id}"), forged.clone()),
            ("POST", "AuditEvent".to_owned(), forged.clone()),
            ("DELETE", format!("AuditEvent/{id}"), Value::Null),
            (
                "POST",
                String::new(),
                json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
                    { "request": { "method": "DELETE", "url": format!("AuditEvent/{id}") } }] }),
            ),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(repository.path(&path).trim_end_matches('/'))
                .header("content-type", "application/fhir+json")
                .body(Full::new(Bytes::from(if body.is_null() {
                    Vec::new()
                } else {
                    serde_json::to_vec(&body).unwrap()
                })))
                .unwrap();
            let answer = client.send(request).await.unwrap();
            assert_eq!(answer.status, 403, "{method} {path}: {}", answer.text());
        }
    }
    // Reads stay open to the auditors, and the event is as the gateway shipped it.
    let read = repository
        .client(None)
        .get(&repository.path(&format!("AuditEvent/{id}")), None)
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(read.json()["recorded"], shipped[0]["recorded"]);
}

#[tokio::test]
async fn a_shipped_position_moved_over_unshipped_records_stops_the_shipping() {
    let repository = Repository::start();
    let mut gateway = Gateway::start_with(repository.gateway_options(""));
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    read_anne(&gateway, &token).await;
    let shipped = shipped_events(&repository, 1).await;
    let shipped_id = shipped[0]["id"].as_str().unwrap().to_owned();
    assert!(gateway.terminate().success());

    // A run whose repository is out of reach: its records stay unshipped.
    let config = gateway.dir.path().join("portvagt.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let unreachable = original.replace(repository.base_url(), "https://127.0.0.1:9/fhir/R4");
    std::fs::write(&config, &unreachable).unwrap();
    gateway.restart();
    read_anne(&gateway, &token).await;
    read_anne(&gateway, &token).await;
    assert!(gateway.terminate().success());

    // Down: shipped.json moved to the end of the chain, naming an event the repository does
    // hold, so the unshipped records would be skipped (and later pruned).
    let spool = gateway.dir.path().join("audit");
    let segment = spool.join("segment-0000000001.jsonl");
    let text = std::fs::read_to_string(&segment).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let hash = |line: &str| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, line.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let forged = json!({
        "segment": 1, "offset": text.len(), "seq": last["seq"],
        "head": hash(lines.last().unwrap()), "last_event": shipped_id,
    });
    std::fs::write(spool.join("shipped.json"), forged.to_string()).unwrap();
    std::fs::write(&config, &original).unwrap();
    gateway.restart();
    let broken = chain_broken(&gateway).await;
    assert_eq!(broken, Some(1.0), "{}", gateway.raw_log());
    assert!(logged(&gateway, "moved over unshipped records").await);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        repository.events().await.len(),
        1,
        "nothing shipped past the alarm"
    );
}

/// Copies the files of `from` into `to` (emptied first).
fn copy_spool(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_spool_cut_back_while_the_gateway_is_down_is_found_against_the_repositorys_anchor() {
    let repository = Repository::start();
    let mut gateway = Gateway::start_with(Options {
        pki: Some(repository.pki.clone()),
        audit_extra: format!(
            "observer = \"portvagt-anchor-test\"\n{}",
            Repository::ship(repository.base_url(), "")
        ),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    // The anchor is the chain's: its id is in every segment header.
    let header = std::fs::read_to_string(gateway.dir.path().join("audit/segment-0000000001.jsonl"))
        .unwrap()
        .lines()
        .next()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .unwrap();
    let chain = header["chain"].as_str().unwrap().to_owned();
    let anchor = repository.path(&format!(
        "Provenance/{}",
        portvagt::audit::anchor::anchor_id(&chain)
    ));
    // A run: reads, shipped (on a sealed spool every shipped batch ends at a seal and moves
    // the anchor up to it, in the same transaction).
    assert_eq!(read_and_ship(&gateway, &token, &repository, 2, 2).await, 2);
    let anchored = repository.client(None).get(&anchor, None).await.unwrap();
    assert_eq!(anchored.status, 200, "{}", anchored.text());
    assert!(gateway.terminate().success());
    let spool = gateway.dir.path().join("audit");
    let earlier = gateway.dir.path().join("audit-earlier");
    copy_spool(&spool, &earlier);

    gateway.restart();
    assert_eq!(read_and_ship(&gateway, &token, &repository, 3, 5).await, 5);
    assert!(gateway.terminate().success());
    let verify = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_portvagt"))
            .args(["audit", "verify"])
            .arg(&spool)
            .arg("--jwks")
            .arg(gateway.dir.path().join("seal/seal-jwks.json"))
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let ca = gateway.dir.path().join("pki/ca.crt");
    let against_repository = [
        "--repository",
        repository.base_url(),
        "--repository-ca",
        ca.to_str().unwrap(),
    ];
    let (ok, stdout) = verify(&against_repository);
    assert!(ok && stdout.contains("reaches the anchor"), "{stdout}");
    assert!(stdout.contains(&format!("of chain {chain}")), "{stdout}");
    let (ok, stdout) = verify(&["--chain", "0123456789abcdef0123456789abcdef"]);
    assert!(!ok && stdout.contains("another spool"), "{stdout}");

    // Down: the spool (and shipped.json with it) put back as it was after the first run.
    // Locally that is a spool that closed cleanly; the repository's anchor says otherwise.
    copy_spool(&earlier, &spool);
    let (ok, stdout) = verify(&[]);
    assert!(
        ok && stdout.contains("closed cleanly"),
        "alone, it cannot tell: {stdout}"
    );
    let (ok, stdout) = verify(&against_repository);
    assert!(!ok && stdout.contains("records were cut off"), "{stdout}");

    // Started on the cut spool, the gateway finds it too, and ships nothing.
    gateway.restart();
    let broken = chain_broken(&gateway).await;
    assert_eq!(broken, Some(1.0));
    assert!(logged(&gateway, "records were cut off").await);
}

/// Whether the gateway logs `text` within 5 s (log lines reach its output through a writer
/// thread, after the metric that counts the same thing).
async fn logged(gateway: &Gateway, text: &str) -> bool {
    for _ in 0..50 {
        if gateway.raw_log().contains(text) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_seal_key_rotated_with_the_old_key_trusted_ships_on() {
    let repository = Repository::start();
    let mut gateway = Gateway::start_with(repository.gateway_options(""));
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    assert!(read_and_ship(&gateway, &token, &repository, 1, 1).await >= 1);
    assert!(gateway.terminate().success());

    // A new key; the old one's seals (and the anchor) stay in the chain.
    let dir = gateway.dir.path().to_owned();
    let new = portvagt::auth::issuer_key::IssuerKey::generate("seal-test-2").unwrap();
    std::fs::create_dir_all(dir.join("seal2")).unwrap();
    std::fs::write(dir.join("seal2/seal.key"), new.pem()).unwrap();
    let old: Value =
        serde_json::from_slice(&std::fs::read(dir.join("seal/seal-jwks.json")).unwrap()).unwrap();
    let mut both: Value = serde_json::from_str(&new.jwks()).unwrap();
    both["keys"]
        .as_array_mut()
        .unwrap()
        .extend(old["keys"].as_array().unwrap().iter().cloned());
    std::fs::write(dir.join("seal2/both.json"), both.to_string()).unwrap();
    let config = dir.join("portvagt.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let rotated = original
        .replace(
            "seal_key = \"seal/seal.key\"",
            "seal_key = \"seal2/seal.key\"",
        )
        .replace(
            "seal_key_id = \"seal-test-1\"",
            "seal_key_id = \"seal-test-2\"",
        );

    // Without the old key trusted, the shipper cannot check the chain: it stops, loudly.
    std::fs::write(&config, &rotated).unwrap();
    gateway.restart();
    assert!(logged(&gateway, "AUDIT CHAIN BROKEN").await);
    assert!(gateway.terminate().success());

    // With it, shipping goes on, and the chain verifies with both keys.
    std::fs::write(
        &config,
        rotated.replace(
            "seal_key_id = \"seal-test-2\"",
            "seal_key_id = \"seal-test-2\"\nseal_jwks = \"seal2/both.json\"",
        ),
    )
    .unwrap();
    gateway.restart();
    assert!(
        read_and_ship(&gateway, &token, &repository, 1, 2).await >= 2,
        "{}",
        gateway.raw_log()
    );
    assert!(gateway.terminate().success());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .args(["audit", "verify"])
        .arg(dir.join("audit"))
        .arg("--jwks")
        .arg(dir.join("seal2/both.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("closed cleanly"),
        "{stdout}"
    );
}

/// `portvagt_audit_chain_broken` once it is 1, or what it was after 10 s.
async fn chain_broken(gateway: &Gateway) -> Option<f64> {
    let mut broken = None;
    for _ in 0..100 {
        let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
        broken = metric_value(&metrics, "portvagt_audit_chain_broken");
        if broken == Some(1.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    broken
}

/// Reads Anne's record with `token`: answered 200.
async fn read_anne(gateway: &Gateway, token: &str) {
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

/// The events in `repository` once it holds at least `count` (or what it holds after 10 s).
async fn shipped_events(repository: &Repository, count: usize) -> Vec<Value> {
    shipped_events_within(repository, count, 10).await
}

/// [`shipped_events`], waiting up to `seconds` (the shipper's back-off after a repository that
/// was down may be several seconds).
async fn shipped_events_within(repository: &Repository, count: usize, seconds: u64) -> Vec<Value> {
    let mut shipped = Vec::new();
    for _ in 0..seconds * 10 {
        shipped = repository.events().await;
        if shipped.len() >= count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    shipped
}

/// `reads` reads of Anne's record, then the number of events in `repository` once it holds
/// at least `total` (or after 10 s).
async fn read_and_ship(
    gateway: &Gateway,
    token: &str,
    repository: &Repository,
    reads: usize,
    total: usize,
) -> usize {
    for _ in 0..reads {
        read_anne(gateway, token).await;
    }
    shipped_events(repository, total).await.len()
}

/// One request costs the spool at most `max_patients_per_request` events: an answer about
/// more is refused and recorded as one event; the spool's free space is a metric, and below
/// `min_free_bytes` the gateway is not ready.
#[tokio::test]
async fn one_request_costs_the_spool_at_most_its_bound_and_readiness_watches_the_headroom() {
    let gateway = Gateway::start_with(Options {
        audit_extra: "max_patients_per_request = 2\n".into(),
        ..Options::default()
    });
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let small = client
        .get("/fhir/Patient?_count=2", Some(&token))
        .await
        .unwrap();
    assert_eq!(small.status, 200, "{}", small.text());
    let big = client
        .get("/fhir/Patient?_count=50", Some(&token))
        .await
        .unwrap();
    assert!(
        big.status == 403,
        "the seed data has more than two patients: {}",
        big.text()
    );
    assert_eq!(big.detail_code(), "too-many-patients");
    let request_id = big.headers["x-request-id"].to_str().unwrap().to_owned();
    let events = gateway.audit_events_for(&request_id);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        !events[0].to_string().contains("\"Patient/"),
        "{}",
        events[0]
    );
    let request_id = small.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(gateway.audit_events_for(&request_id).len(), 2);

    // Named in the request, or entries that each cost an event: refused before anything is
    // sent, and recorded as one event.
    let named = client
        .get(
            "/fhir/Observation?patient=pat-anne,pat-bo,pat-carla",
            Some(&token),
        )
        .await
        .unwrap();
    let entries = client
        .send(crate::support::request(
            http::Method::POST,
            "/fhir",
            Some(&token),
            Some(
                json!({ "resourceType": "Bundle", "type": "batch", "entry": [
                    { "request": { "method": "GET", "url": "Patient/no-such-1" } },
                    { "request": { "method": "GET", "url": "Patient/no-such-2" } },
                    { "request": { "method": "GET", "url": "Patient/no-such-3" } }
                ]}),
            ),
        ))
        .await
        .unwrap();
    for answer in [&named, &entries] {
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code()),
            (403, "too-many-patients".to_owned()),
            "{}",
            answer.text()
        );
        let request_id = answer.headers["x-request-id"].to_str().unwrap();
        assert_eq!(gateway.audit_events_for(request_id).len(), 1);
    }

    // A write to a resource outside the compartment that still names its patients (a
    // Contract): whose they are is read before it is sent, so one naming more than the bound
    // is refused before anything changes, and one within it is recorded patient by patient.
    let writer = gateway.token(json!({ "scope": "user/*.cruds" }));
    let contract = |subjects: &[&str]| {
        json!({ "resourceType": "Contract", "status": "offered",
                "subject": subjects.iter().map(|p| json!({ "reference": format!("Patient/{p}") })).collect::<Vec<_>>() })
    };
    let base = crate::support::backend_url();
    let many = crate::support::backend_send(
        base,
        http::Method::POST,
        "Contract",
        Some(contract(&["pat-anne", "pat-bo", "pat-carla"])),
    )
    .await;
    let few = crate::support::backend_send(
        base,
        http::Method::POST,
        "Contract",
        Some(contract(&["pat-anne", "pat-bo"])),
    )
    .await;
    let patch = r#"[{ "op": "replace", "path": "/status", "value": "executed" }]"#;
    let refused = client
        .send(crate::support::json_patch(
            &format!("/fhir/Contract/{}", many["id"].as_str().unwrap()),
            &writer,
            patch,
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(
        (refused.status.as_u16(), refused.detail_code()),
        (403, "too-many-patients".to_owned()),
        "{}",
        refused.text()
    );
    let (_, unchanged) =
        crate::support::backend_get(&format!("Contract/{}", many["id"].as_str().unwrap())).await;
    assert_eq!(unchanged["status"], "offered");
    let done = client
        .send(crate::support::json_patch(
            &format!("/fhir/Contract/{}", few["id"].as_str().unwrap()),
            &writer,
            patch,
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(done.status, 200, "{}", done.text());
    let request_id = done.headers["x-request-id"].to_str().unwrap();
    assert_eq!(gateway.audit_events_for(request_id).len(), 2);

    let metrics = client.get("/metrics", None).await.unwrap().text();
    let free = crate::support::metric_value(&metrics, "portvagt_audit_spool_free_bytes").unwrap();
    let capacity =
        crate::support::metric_value(&metrics, "portvagt_audit_spool_capacity_bytes").unwrap();
    assert!(free > 0.0 && capacity >= free, "{free} of {capacity}");
    assert_eq!(client.get("/readyz", None).await.unwrap().status, 200);

    // The record names both those the request names and those its answer holds: together
    // over the bound (two named, three in the answer, four in all), though neither alone is.
    let three = Gateway::start_with(Options {
        audit_extra: "max_patients_per_request = 3\n".into(),
        ..Options::default()
    });
    let shared = crate::support::backend_send(
        base,
        http::Method::POST,
        "Contract",
        Some(contract(&["pat-anne", "pat-bo", "pat-carla"])),
    )
    .await;
    let reader = three.token(json!({ "scope": "user/*.rs" }));
    let together = three
        .client()
        .get(
            &format!(
                "/fhir/Contract?_id={}&subject=Patient/pat-anne,Patient/pat-nobody",
                shared["id"].as_str().unwrap()
            ),
            Some(&reader),
        )
        .await
        .unwrap();
    assert_eq!(
        (together.status.as_u16(), together.detail_code()),
        (403, "too-many-patients".to_owned()),
        "{}",
        together.text()
    );

    // A disk with less free than asked for: not ready, and it says why.
    let tight = Gateway::start_with(Options {
        audit_extra: "min_free_bytes = 1125899906842624\n".into(),
        ..Options::default()
    });
    let ready = tight.client().get("/readyz", None).await.unwrap();
    assert_eq!(
        (ready.status.as_u16(), ready.detail_code().as_str()),
        (503, "audit-spool-low")
    );
}

/// The audit-log rules hold for what is returned (a backend that stores AuditEvents of its own,
/// as the reference backend does): a user token may not read AuditEvents (403
/// `audit-log-restricted`), and reaching them sideways (an include, `$everything`, a batch
/// entry) finds them taken out, while the backend itself would have answered them.
#[tokio::test]
async fn audit_events_reached_sideways_are_taken_out_of_the_answer() {
    use crate::support::{MARKER_SYSTEM, backend_send, request};
    use http::Method;
    let gateway = Gateway::start();
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    // A patient of this test's own, and an AuditEvent about her held in the backend.
    let marker = uuid::Uuid::new_v4().to_string();
    let patient = backend_send(
        backend_url(),
        Method::POST,
        "Patient",
        Some(json!({ "resourceType": "Patient",
                     "identifier": [{ "system": MARKER_SYSTEM, "value": marker }] })),
    )
    .await;
    let id = patient["id"].as_str().unwrap().to_owned();
    let event = backend_send(
        backend_url(),
        Method::POST,
        "AuditEvent",
        Some(json!({ "resourceType": "AuditEvent",
            "type": { "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110" },
            "recorded": "2026-12-01T10:00:00Z",
            "agent": [{ "requestor": true, "who": { "display": "someone" } }],
            "source": { "observer": { "display": "another system" } },
            "entity": [{ "what": { "reference": format!("Patient/{id}") } }] })),
    )
    .await;
    assert_eq!(event["resourceType"], "AuditEvent", "{event}");
    let holds_audit_event = |body: &serde_json::Value| body.to_string().contains("\"AuditEvent\"");

    // Asked for directly: refused.
    let direct = client
        .get(
            &format!("/fhir/AuditEvent?entity=Patient/{id}"),
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(
        (direct.status.as_u16(), direct.detail_code()),
        (403, "audit-log-restricted".to_owned())
    );
    // Sideways: the backend answers the AuditEvent; the gateway does not pass it on.
    for path in [
        format!("Patient?_id={id}&_revinclude=AuditEvent:entity"),
        format!("Patient/{id}/$everything"),
    ] {
        let (_, from_backend) = crate::support::backend_get(&path).await;
        assert!(holds_audit_event(&from_backend), "{path}: {from_backend}");
        let answer = client
            .get(&format!("/fhir/{path}"), Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        let body = answer.json();
        assert!(!holds_audit_event(&body), "{path}: {body}");
        assert!(
            body.to_string().contains(&id),
            "{path}: the patient stays: {body}"
        );
    }
    // The same inside a batch.
    let batch = client
        .send(request(
            Method::POST,
            "/fhir",
            Some(&token),
            Some(json!({ "resourceType": "Bundle", "type": "batch", "entry": [
                { "request": { "method": "GET", "url": format!("Patient/{id}/$everything") } },
                { "request": { "method": "GET", "url": format!("Patient?_id={id}&_revinclude=AuditEvent:entity") } }
            ]})),
        ))
        .await
        .unwrap();
    assert_eq!(batch.status, 200, "{}", batch.text());
    assert!(!holds_audit_event(&batch.json()), "{}", batch.text());
    assert!(batch.text().contains(&id));

    // Searching by what AuditEvents say reads them too.
    for path in [
        "/fhir/Patient?_has:AuditEvent:entity:type=110110".to_owned(),
        "/fhir?_type=AuditEvent&_summary=count".to_owned(),
    ] {
        let answer = client.get(&path, Some(&token)).await.unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code()),
            (403, "audit-log-restricted".to_owned()),
            "{path}: {}",
            answer.text()
        );
    }
    // An AuditEvent stored as a Binary's content (as a bulk export's output is).
    use base64::Engine as _;
    let stored = backend_send(
        backend_url(),
        Method::POST,
        "Binary",
        Some(
            json!({ "resourceType": "Binary", "contentType": "application/fhir+ndjson",
            "data": base64::engine::general_purpose::STANDARD.encode(event.to_string()) }),
        ),
    )
    .await;
    let binary = stored["id"].as_str().unwrap().to_owned();
    let answer = client
        .get(&format!("/fhir/Binary/{binary}"), Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code()),
        (403, "audit-log-restricted".to_owned()),
        "{}",
        answer.text()
    );
    assert!(!answer.text().contains(event["id"].as_str().unwrap()));
}
