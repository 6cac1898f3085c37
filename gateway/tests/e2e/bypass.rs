//! Ways to say more than the URL shows: form bodies, conditional headers, overrides, formats,
//! duplicate credentials, streamed bodies. Each must be seen by policy or refused.

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::json;

use crate::support::{Gateway, Options, request};

fn form(path: &str, token: &str, body: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn patient_token(gateway: &Gateway) -> String {
    gateway.token(json!({ "sub": "anne.hansen", "patient": "pat-anne", "scope": "patient/Observation.rs patient/Patient.rs" }))
}

#[tokio::test]
async fn post_search_body_is_classified_and_forwarded_canonically() {
    let gateway = Gateway::start();
    let token = patient_token(&gateway);
    let client = gateway.client();

    // The pin in the URL, an empty body: the backend still searches for Anne only.
    let answer = client
        .send(form(
            "/fhir/Observation/_search?patient=pat-anne",
            &token,
            "",
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let entries = answer.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!entries.is_empty());
    assert!(
        entries
            .iter()
            .all(|e| e["resource"]["subject"]["reference"] == "Patient/pat-anne"),
        "{entries:?}"
    );

    // The pin in the body works the same.
    let answer = client
        .send(form(
            "/fhir/Observation/_search",
            &token,
            "patient=pat-anne",
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());

    // What the body adds is seen by policy.
    for (url, body, status) in [
        (
            "/fhir/Observation/_search?patient=pat-anne",
            "_include=Observation:performer",
            403,
        ),
        (
            "/fhir/Observation/_search?patient=pat-anne",
            "patient=pat-bo",
            400,
        ),
        ("/fhir/Observation/_search", "patient=pat-bo", 403),
    ] {
        let answer = client.send(form(url, &token, body)).await.unwrap();
        assert_eq!(answer.status, status, "{url} + {body}: {}", answer.text());
    }
    // No pin anywhere: narrowed to Anne, in the forwarded form body.
    let answer = client
        .send(form(
            "/fhir/Observation/_search",
            &token,
            "code=http://loinc.org%7C4548-4",
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let ids: Vec<String> = answer.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["obs-anne-hba1c"]);

    let json_body = request(
        Method::POST,
        "/fhir/Observation/_search",
        Some(&token),
        Some(json!({ "patient": "pat-bo" })),
    );
    let answer = client.send(json_body).await.unwrap();
    assert_eq!(answer.status, 415, "{}", answer.text());
    assert_eq!(answer.detail_code(), "search-body-not-form");
}

#[tokio::test]
async fn includes_need_a_scope_on_every_type() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let narrow = gateway.token(json!({ "scope": "user/Observation.rs" }));
    let answer = client
        .get(
            "/fhir/Observation?patient=pat-bo&_include=Observation:subject",
            Some(&narrow),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "search-reaches-other-types");
    let answer = client
        .send(form(
            "/fhir/Observation/_search",
            &narrow,
            "patient=pat-bo&_include=Observation:subject",
        ))
        .await
        .unwrap();
    assert_eq!(answer.detail_code(), "search-reaches-other-types");

    let wide = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = client
        .get(
            "/fhir/Observation?patient=pat-bo&_include=Observation:subject",
            Some(&wide),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn conditional_create_with_a_create_only_scope_is_refused() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "system/Observation.c" }));
    let mut create = request(
        Method::POST,
        "/fhir/Observation",
        Some(&token),
        Some(json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" } })),
    );
    create
        .headers_mut()
        .insert("if-none-exist", "_id=obs-bo-bp".parse().unwrap());
    let answer = gateway.client().send(create).await.unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert!(
        !answer.text().contains("obs-bo-bp\",\"status"),
        "Bo's observation leaked"
    );
}

#[tokio::test]
async fn overrides_formats_and_duplicate_credentials_are_refused() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/*.cruds" }));
    let client = gateway.client();

    let answer = client
        .get(
            "/fhir/Observation?identifier=x&_method=DELETE",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (400, "method-override")
    );

    let answer = client
        .get("/fhir/Patient/pat-anne?_format=turtle", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (406, "unsupported-format")
    );

    let mut twice = request(Method::GET, "/fhir/Patient/pat-anne", Some(&token), None);
    let other = gateway.token(json!({ "sub": "someone.else" }));
    twice
        .headers_mut()
        .append("authorization", format!("Bearer {other}").parse().unwrap());
    let answer = client.send(twice).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (401, "malformed-token")
    );

    let dpop_bound =
        gateway.token(json!({ "cnf": { "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" } }));
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&dpop_bound))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (401, "unsupported-confirmation")
    );

    let odd_patient = gateway.token(json!({ "patient": "", "scope": "patient/Observation.rs" }));
    let answer = client
        .get("/fhir/Observation?patient=", Some(&odd_patient))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (401, "invalid-claim")
    );
}

#[tokio::test]
async fn streamed_body_over_the_limit_gets_413() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[limits]\nmax_body_bytes = 1024\n".into(),
        ..Default::default()
    });
    let token = gateway.token(json!({ "scope": "user/Observation.cruds" }));
    let big = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x".repeat(8192) } });
    let answer = gateway
        .client()
        .send_chunked(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(big),
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.detail_code(), "body-too-large");
}
