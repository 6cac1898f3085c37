//! A backend on a bad day, and clients that ask too much: a hung backend is answered 504 within
//! the response timeout, a resetting one 502 (after one retry for a GET), a failing one opens
//! the circuit (fast 503 with Retry-After, no more load on it) until a trial succeeds; per-client
//! rate limits answer 429, shared by two gateways through a real Redis. The faulty backend is a
//! small server of the test's own: a real FHIR server cannot hang or reset on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Answer, Gateway, Options, metric_value};

const HANG: u8 = 0;
const RESET: u8 = 1;
const FAIL: u8 = 2;
const HEALTHY: u8 = 3;
/// Bytes that are not HTTP.
const GARBAGE: u8 = 4;
/// A 200 declaring 10 GB of body and streaming it.
const HUGE: u8 = 5;
/// A 200 whose body is not JSON.
const NOT_JSON: u8 = 6;
/// 429 Too Many Requests, with an OperationOutcome.
pub(crate) const TOO_MANY: u8 = 7;
/// A 200 with a document's raw bytes (`application/pdf`), as a server may answer a Binary.
const DOCUMENT: u8 = 8;
/// A 200 with an Observation whose subject gives `reference` twice: Bo's, then Anne's.
const DUPLICATE: u8 = 9;
/// A 200 searchset (its `fullUrl` the backend's own, so its URLs are rewritten) whose
/// Observation's subject gives `reference` twice: Bo's, then Anne's.
const DUPLICATE_IN_SEARCHSET: u8 = 10;
/// The same, the Observation giving `subject` itself twice: Bo's, then Anne's.
const DUPLICATE_SUBJECT: u8 = 12;
/// A 200 searchset whose Observation's subject is a member named as serde_json's raw value
/// token, holding Bo's reference as text: nobody's to a reader of its members, Bo's once a
/// serde_json tree is built of it.
const RAW_VALUE_SPOOF: u8 = 11;
/// A 200 searchset (its URLs the backend's own) of two Observations: Anne's, then Bo's.
const MIXED_SEARCHSET: u8 = 13;
/// The same searchset with no `Content-Type`.
const UNLABELLED: u8 = 14;
/// The same with an empty `Content-Type`.
const EMPTY_LABEL: u8 = 15;
/// The same labelled `text/plain`.
const TEXT_LABEL: u8 = 16;
/// The same labelled FHIR JSON with a byte that is not ASCII in a parameter.
const BYTES_LABEL: u8 = 17;
/// The same labelled FHIR JSON in capitals (media types compare in any case).
const CAPITAL_LABEL: u8 = 18;
/// A 409 whose body is Bo's Observation, not an OperationOutcome.
const CONFLICT_WITH_RESOURCE: u8 = 19;

/// A backend whose behaviour the test switches; it counts the requests that reach it.
pub(crate) struct FaultyBackend {
    pub(crate) url: String,
    mode: Arc<AtomicU8>,
    pub(crate) requests: Arc<AtomicUsize>,
}

impl FaultyBackend {
    pub(crate) async fn start(mode: u8) -> FaultyBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/fhir", listener.local_addr().unwrap());
        let mode = Arc::new(AtomicU8::new(mode));
        let requests = Arc::new(AtomicUsize::new(0));
        let (m, r) = (mode.clone(), requests.clone());
        let base = url.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (mode, requests, base) = (m.clone(), r.clone(), base.clone());
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buffer[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    match mode.load(Ordering::SeqCst) {
                        HANG => tokio::time::sleep(Duration::from_secs(60)).await,
                        RESET => drop(stream),
                        GARBAGE => {
                            let _ = stream
                                .write_all(b"\x16\x03\x01\x00garbage\r\n\r\n\x00\xff")
                                .await;
                        }
                        HUGE => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 10000000000\r\n\r\n")
                                .await;
                            let chunk = vec![b' '; 64 * 1024];
                            // Until the gateway hangs up (it must, long before 10 GB).
                            for _ in 0..160_000 {
                                if stream.write_all(&chunk).await.is_err() {
                                    break;
                                }
                            }
                        }
                        NOT_JSON => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n<html>oh!")
                                .await;
                        }
                        DOCUMENT => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/pdf\r\ncontent-length: 20\r\nconnection: close\r\n\r\n%PDF-1.7 journalnote")
                                .await;
                        }
                        DUPLICATE => {
                            let body = br#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-bo","reference":"Patient/pat-anne"}}"#;
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(body).await;
                        }
                        DUPLICATE_IN_SEARCHSET | RAW_VALUE_SPOOF | DUPLICATE_SUBJECT => {
                            let subject = match mode.load(Ordering::SeqCst) {
                                RAW_VALUE_SPOOF => {
                                    r#"{"$serde_json::private::RawValue":"{\"reference\":\"Patient/pat-bo\"}"}"#
                                }
                                DUPLICATE_SUBJECT => {
                                    r#"{"reference":"Patient/pat-bo"},"subject":{"reference":"Patient/pat-anne"}"#
                                }
                                _ => {
                                    r#"{"reference":"Patient/pat-bo","reference":"Patient/pat-anne"}"#
                                }
                            };
                            let body = format!(
                                r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"self","url":"{base}/Observation?code=x"}}],"entry":[{{"fullUrl":"{base}/Observation/o1","resource":{{"resourceType":"Observation","id":"o1","status":"final","code":{{"text":"x"}},"subject":{subject}}}}}]}}"#
                            );
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(body.as_bytes()).await;
                        }
                        MIXED_SEARCHSET | UNLABELLED | EMPTY_LABEL | TEXT_LABEL | BYTES_LABEL
                        | CAPITAL_LABEL => {
                            let entry = |id: &str, patient: &str| {
                                format!(
                                    r#"{{"fullUrl":"{base}/Observation/{id}","resource":{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"x"}},"subject":{{"reference":"Patient/{patient}"}}}}}}"#
                                )
                            };
                            let body = format!(
                                r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"self","url":"{base}/Observation?code=x"}}],"entry":[{},{}]}}"#,
                                entry("o1", "pat-anne"),
                                entry("o2", "pat-bo")
                            );
                            let label: &[u8] = match mode.load(Ordering::SeqCst) {
                                UNLABELLED => b"",
                                EMPTY_LABEL => b"content-type: \r\n",
                                TEXT_LABEL => b"content-type: text/plain\r\n",
                                BYTES_LABEL => b"content-type: application/fhir+json; x=\xe9\r\n",
                                CAPITAL_LABEL => b"content-type: Application/FHIR+JSON\r\n",
                                _ => b"content-type: application/fhir+json\r\n",
                            };
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n").await;
                            let _ = stream.write_all(label).await;
                            let head = format!(
                                "content-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(body.as_bytes()).await;
                        }
                        CONFLICT_WITH_RESOURCE => {
                            let body = br#"{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat-bo"}}"#;
                            let head = format!(
                                "HTTP/1.1 409 Conflict\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(body).await;
                        }
                        FAIL => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 22\r\nconnection: close\r\n\r\nstack trace: secret.rs")
                                .await;
                        }
                        TOO_MANY => {
                            let body = json!({ "resourceType": "OperationOutcome", "issue": [
                                { "severity": "error", "code": "throttled" }] })
                            .to_string();
                            let head = format!(
                                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(body.as_bytes()).await;
                        }
                        _ => {
                            let body =
                                json!({ "resourceType": "Patient", "id": "pat-anne" }).to_string();
                            let head = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(body.as_bytes()).await;
                        }
                    }
                });
            }
        });
        FaultyBackend {
            url,
            mode,
            requests,
        }
    }
}

/// `answer` is the gateway's refusal `(status, detail code)` and tells nothing of Bo.
fn assert_refused_without_bo(answer: &Answer, refusal: (u16, &str), context: &str) {
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        refusal,
        "{context}: {}",
        answer.text()
    );
    assert!(
        !answer.text().contains("pat-bo"),
        "{context}: {}",
        answer.text()
    );
}

fn gateway_before(backend: &FaultyBackend, backend_extra: &str) -> Gateway {
    Gateway::start_with(Options {
        backend_url: Some(backend.url.clone()),
        backend_extra: backend_extra.into(),
        ..Options::default()
    })
}

#[tokio::test]
async fn a_hung_backend_is_answered_504_within_the_response_timeout() {
    let backend = FaultyBackend::start(HANG).await;
    let gateway = gateway_before(&backend, "response_timeout = \"700ms\"");
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let started = Instant::now();
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status, 504);
    assert_eq!(answer.detail_code(), "backend-timeout");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // A timed-out request is not retried: the backend may still be working on it.
    assert_eq!(backend.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_resetting_backend_is_answered_502_after_one_retry_of_a_read() {
    let backend = FaultyBackend::start(RESET).await;
    let gateway = gateway_before(&backend, "");
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 502);
    assert_eq!(answer.detail_code(), "backend-failed");
    assert_eq!(backend.requests.load(Ordering::SeqCst), 2, "one retry");
    // A write is never sent twice.
    let before = backend.requests.load(Ordering::SeqCst);
    let token = gateway.token(json!({ "scope": "user/*.cruds" }));
    let create = crate::support::request(
        http::Method::POST,
        "/fhir/Observation",
        Some(&token),
        Some(json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" } })),
    );
    let answer = gateway.client().send(create).await.unwrap();
    assert_eq!(answer.status, 502);
    assert_eq!(backend.requests.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn garbage_huge_and_unreadable_answers_are_refused_without_leaking_them() {
    let backend = FaultyBackend::start(GARBAGE).await;
    let gateway = Gateway::start_with(Options {
        backend_url: Some(backend.url.clone()),
        extra_config: "[limits]\nmax_response_bytes = 1048576\n".into(),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let client = gateway.client();
    // Not HTTP at all: 502, nothing of it passed on.
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.detail_code(), "backend-failed");
    assert!(!answer.text().contains("garbage"));

    // 10 GB declared and streamed: refused at the buffering limit, quickly, in bounded memory.
    backend.mode.store(HUGE, Ordering::SeqCst);
    let started = Instant::now();
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.detail_code(), "response-too-large");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let rss_kib = gateway.rss_kib();
    assert!(rss_kib < 256 * 1024, "RSS {rss_kib} KiB");

    // A 200 that is not JSON cannot be shown to be about anyone in particular: refused for a
    // patient-context token (fail closed), never passed on unread.
    backend.mode.store(NOT_JSON, Ordering::SeqCst);
    let patient = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-anne" }));
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&patient))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(!answer.text().contains("oh!"));
}

/// While data is withheld, a read answered with something that is not FHIR JSON (a document's
/// raw bytes) cannot be checked: refused, not passed on. Without withholding it passes.
#[tokio::test]
async fn an_answer_that_cannot_be_read_is_refused_while_data_is_withheld() {
    let backend = FaultyBackend::start(DOCUMENT).await;
    let open = Gateway::start_with(Options {
        backend_url: Some(backend.url.clone()),
        ..Options::default()
    });
    let token = open.token(json!({ "scope": "user/*.rs" }));
    let answer = open
        .client()
        .get("/fhir/Binary/doc-1", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    for extra in [
        "[consent]\n",
        "[relationship]\nroles = [\"7170\"]\nsource = \"fhir\"\n",
    ] {
        let gateway = Gateway::start_with(Options {
            backend_url: Some(backend.url.clone()),
            extra_config: extra.into(),
            ..Options::default()
        });
        let token = gateway.token(json!({ "scope": "user/*.rs", "role": "7170",
            "authorization_id": "NS363" }));
        let answer = gateway
            .client()
            .get("/fhir/Binary/doc-1", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 503, "{extra}: {}", answer.text());
        assert_eq!(answer.detail_code(), "consent-unavailable");
        assert!(!answer.text().contains("journalnote"), "{extra}");
    }
}

#[tokio::test]
async fn consents_that_cannot_be_read_refuse_the_access() {
    // The backend answers every search for Consents with something that is not a searchset.
    let backend = FaultyBackend::start(HEALTHY).await;
    let gateway = Gateway::start_with(Options {
        backend_url: Some(backend.url.clone()),
        extra_config: "[consent]\ncache_ttl = \"1s\"\n".into(),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.detail_code(), "consent-unavailable");
    assert!(answer.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_failing_backend_opens_the_circuit_until_a_trial_succeeds() {
    let backend = FaultyBackend::start(FAIL).await;
    let gateway = gateway_before(
        &backend,
        "circuit_failures = 3\ncircuit_open = \"1s\"\nretries = 0",
    );
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let client = gateway.client();
    for _ in 0..3 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 502);
        assert!(
            !answer.text().contains("secret.rs"),
            "backend internals leaked"
        );
    }
    let reached = backend.requests.load(Ordering::SeqCst);
    let open = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(open.status, 503);
    assert_eq!(open.detail_code(), "backend-circuit-open");
    assert!(open.headers.contains_key("retry-after"));
    assert_eq!(
        backend.requests.load(Ordering::SeqCst),
        reached,
        "no load while open"
    );
    // Not ready while its only backend fails: a load balancer sends traffic elsewhere.
    let ready = client.get("/readyz", None).await.unwrap();
    assert_eq!(ready.status, 503);
    assert_eq!(ready.detail_code(), "backend-unavailable");

    backend.mode.store(HEALTHY, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let trial = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(trial.status, 200, "{}", trial.text());
    let after = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(after.status, 200);
    let mut ready = client.get("/readyz", None).await.unwrap();
    for _ in 0..20 {
        if ready.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = client.get("/readyz", None).await.unwrap();
    }
    assert_eq!(ready.status, 200, "ready again: {}", ready.text());
    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_backend_circuit_opened_total"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_rate_limit_is_shared_by_two_gateways_through_redis() {
    let redis = crate::token_exchange::Redis::start();
    let pki = Arc::new(portvagt_certs::DevPki::generate().unwrap());
    let options = Options {
        pki: Some(pki.clone()),
        extra_config: format!(
            "[rate_limit]\nrequests = 4\nwindow = \"600s\"\nredis_url = \"{}\"\n",
            redis.url
        ),
        ..Options::default()
    };
    let first = Gateway::start_with(options.clone());
    let second = Gateway::start_with(options);
    // The same user (issuer and subject) at both; the issuer keys differ per gateway, so each
    // signs its own token for the same subject.
    let at_first = first.token(json!({ "scope": "user/*.rs", "sub": "busy.client" }));
    let at_second = second.token(json!({ "scope": "user/*.rs", "sub": "busy.client" }));
    let mut statuses = Vec::new();
    for (gateway, token) in [(&first, &at_first), (&second, &at_second)] {
        for _ in 0..3 {
            let answer = gateway
                .client()
                .get("/fhir/Patient/pat-anne", Some(token))
                .await
                .unwrap();
            statuses.push(answer.status.as_u16());
            if answer.status == 429 {
                assert_eq!(answer.detail_code(), "rate-limited");
                let retry: u64 = answer.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=600).contains(&retry), "{retry}");
            }
        }
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 200, 429, 429],
        "4 per window across both"
    );
    // Another client is not affected.
    let other = second.token(json!({ "scope": "user/*.rs", "sub": "quiet.client" }));
    let answer = second
        .client()
        .get("/fhir/Patient/pat-anne", Some(&other))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn without_redis_each_gateway_still_limits_on_its_own() {
    // Port 1: nothing listens there, so every Redis call fails at once.
    let gateway = Gateway::start_with(Options {
        extra_config:
            "[rate_limit]\nrequests = 3\nwindow = \"600s\"\nredis_url = \"redis://127.0.0.1:1\"\n"
                .into(),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = gateway
            .client()
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
}

/// An answer whose patient reference is given twice (Bo's, then Anne's) means Bo to a client
/// that keeps the first member and Anne to one that keeps the last. Whatever the gateway checks
/// it passes on byte for byte, so such an answer is not Anne's to her app, and its patient
/// cannot be recorded: refused, never passed on.
#[tokio::test]
async fn an_answer_that_gives_its_patient_twice_is_refused() {
    let backend = FaultyBackend::start(DUPLICATE).await;
    let gateway = gateway_before(&backend, "");
    let client = gateway.client();
    let anne = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-anne" }));
    let answer = client
        .get("/fhir/Observation/o1", Some(&anne))
        .await
        .unwrap();
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert!(!answer.text().contains("pat-bo"), "{}", answer.text());
    let professional = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = client
        .get("/fhir/Observation/o1", Some(&professional))
        .await
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert!(!answer.text().contains("pat-bo"), "{}", answer.text());
    // A write so answered is not refused (the change has happened), but what cannot be read
    // does not leave: its answer comes without the body.
    let write = crate::support::request(
        Method::POST,
        "/fhir/Observation",
        Some(&gateway.token(json!({ "scope": "user/*.cruds" }))),
        Some(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "subject": { "reference": "Patient/pat-anne" } })),
    );
    let answer = client.send(write).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.body.is_empty(), "{}", answer.text());
}

/// The same in a searchset whose URLs the gateway rewrites, and a subject hidden in a member
/// that a serde_json tree reads as Bo's reference: whose data it holds cannot be read one way
/// for every reader, so it does not leave.
#[tokio::test]
async fn a_searchset_that_names_its_patient_two_ways_is_refused() {
    for mode in [DUPLICATE_IN_SEARCHSET, RAW_VALUE_SPOOF, DUPLICATE_SUBJECT] {
        let backend = FaultyBackend::start(mode).await;
        let gateway = gateway_before(&backend, "");
        let professional = gateway.token(json!({ "scope": "user/*.rs" }));
        let answer = gateway
            .client()
            .get("/fhir/Observation?code=x", Some(&professional))
            .await
            .unwrap();
        assert_refused_without_bo(
            &answer,
            (502, "backend-answer-unreadable"),
            &format!("mode {mode}"),
        );
    }
}

#[tokio::test]
async fn the_audit_record_names_the_patients_of_the_answer_that_leaves_not_of_the_one_that_came() {
    // The patients are read while the URLs are rewritten; the compartment filter then takes
    // Bo's entry out. The record is of what Anne was shown: her own, not Bo's.
    let backend = FaultyBackend::start(MIXED_SEARCHSET).await;
    let gateway = gateway_before(&backend, "");
    let anne = gateway
        .token(json!({ "sub": "anne.hansen", "patient": "pat-anne", "scope": "patient/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation?code=x", Some(&anne))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!answer.text().contains("pat-bo"), "{}", answer.text());
    assert!(answer.text().contains("pat-anne"), "{}", answer.text());
    assert_eq!(
        crate::reach::audited_patients(&gateway, &answer),
        ["Patient/pat-anne"]
    );
}

/// An answer that does not say it is FHIR JSON (no `Content-Type`, an empty one, `text/plain`,
/// one that cannot be read) is neither read as FHIR JSON nor passed as a document's bytes:
/// whose data it holds cannot be known, so it is refused for every caller, with blocks or
/// without, reads and searches, HEAD too, before any of it leaves. FHIR JSON named in capitals
/// is FHIR JSON: read, checked and audited.
#[tokio::test]
async fn an_answer_that_does_not_say_it_is_fhir_json_is_refused() {
    let backend = FaultyBackend::start(UNLABELLED).await;
    let gateways: Vec<Gateway> = ["", "[consent]\n"]
        .into_iter()
        .map(|extra| {
            Gateway::start_with(Options {
                backend_url: Some(backend.url.clone()),
                extra_config: extra.into(),
                ..Options::default()
            })
        })
        .collect();
    for label in [UNLABELLED, EMPTY_LABEL, TEXT_LABEL, BYTES_LABEL] {
        backend.mode.store(label, Ordering::SeqCst);
        for gateway in &gateways {
            let client = gateway.client();
            for claims in [
                json!({ "scope": "user/*.rs" }),
                json!({ "scope": "patient/*.rs", "patient": "pat-anne" }),
            ] {
                let token = gateway.token(claims.clone());
                for path in ["/fhir/Observation?code=x", "/fhir/Observation/o1"] {
                    let answer = client.get(path, Some(&token)).await.unwrap();
                    assert_refused_without_bo(
                        &answer,
                        (502, "backend-answer-unreadable"),
                        &format!("label {label} {claims} {path}"),
                    );
                    // A HEAD is answered as the GET would be: not 200 with the answer's headers.
                    let head = crate::support::request(Method::HEAD, path, Some(&token), None);
                    let answer = client.send(head).await.unwrap();
                    assert_ne!(answer.status, 200, "HEAD, label {label} {claims} {path}");
                }
            }
        }
    }
    // A Binary's document passes only as the answer to a read of it, not of a search.
    backend.mode.store(TEXT_LABEL, Ordering::SeqCst);
    let gateway = &gateways[0];
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Binary?_count=50", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
    // What a write changed has happened: its answer is not refused, but leaves without a body
    // that does not say it is FHIR JSON.
    let write = crate::support::request(
        Method::POST,
        "/fhir/Observation",
        Some(&gateway.token(json!({ "scope": "user/*.cruds" }))),
        Some(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "subject": { "reference": "Patient/pat-anne" } })),
    );
    let answer = gateway.client().send(write).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.body.is_empty(), "{}", answer.text());
    // Labelled FHIR JSON in capitals: read as JSON, so checked, rewritten and audited.
    backend.mode.store(CAPITAL_LABEL, Ordering::SeqCst);
    let gateway = &gateways[0];
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation?code=x", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!answer.text().contains(&backend.url), "{}", answer.text());
    let mut audited = crate::reach::audited_patients(gateway, &answer);
    audited.sort();
    assert_eq!(audited, ["Patient/pat-anne", "Patient/pat-bo"]);
    let anne = gateway.token(json!({ "scope": "patient/*.rs", "patient": "pat-anne" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation?code=x", Some(&anne))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(!answer.text().contains("pat-bo"), "{}", answer.text());
}

/// An answer that is no success carries an OperationOutcome or nothing: its body is never
/// checked, withheld from or audited, so anything else in it (here another patient's
/// Observation beside a 409) is told in the gateway's words, with the backend's status. An
/// OperationOutcome passes as the backend wrote it.
#[tokio::test]
async fn an_answer_that_is_no_success_passes_only_an_operation_outcome() {
    let backend = FaultyBackend::start(CONFLICT_WITH_RESOURCE).await;
    let gateway = gateway_before(&backend, "");
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Observation/o2", Some(&token))
        .await
        .unwrap();
    assert_refused_without_bo(&answer, (409, "backend-answer-withheld"), "a 409");
    backend.mode.store(TOO_MANY, Ordering::SeqCst);
    let answer = gateway
        .client()
        .get("/fhir/Observation/o2", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 429, "{}", answer.text());
    assert_eq!(answer.json()["issue"][0]["code"], "throttled");
}
