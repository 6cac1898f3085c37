//! Forwarding to the real backend: same data, public URLs, writes land, failures are ours.

use http::Method;
use serde_json::json;

use crate::support::{Gateway, Options, backend_get, backend_url, request};

#[tokio::test]
async fn good_token_reads_the_same_resource_the_backend_returns() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({}));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let (status, direct) = backend_get("Patient/pat-anne").await;
    assert_eq!(status, 200);
    assert_eq!(answer.json(), direct);
    assert_eq!(direct["identifier"][0]["value"], "1111111118");
}

#[tokio::test]
async fn search_bundle_urls_point_at_the_gateway_not_the_backend() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({}));
    let answer = gateway
        .client()
        .get("/fhir/Observation?patient=pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let text = answer.text();
    assert!(!text.contains(backend_url()), "backend URL leaked: {text}");
    let bundle = answer.json();
    assert_eq!(bundle["resourceType"], "Bundle");
    let public = format!("{}/", gateway.base_url);
    let entries = bundle["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        let full_url = entry["fullUrl"].as_str().unwrap();
        assert!(full_url.starts_with(&public), "{full_url}");
        assert!(full_url.ends_with(entry["resource"]["id"].as_str().unwrap()));
    }
    let self_link = bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "self")
        .unwrap();
    assert!(
        self_link["url"]
            .as_str()
            .unwrap()
            .starts_with(&gateway.base_url),
        "{self_link}"
    );
    assert_eq!(
        answer.headers["content-length"].to_str().unwrap(),
        answer.body.len().to_string()
    );
}

#[tokio::test]
async fn create_through_the_gateway_lands_in_the_backend() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/Observation.cruds" }));
    let marker = uuid::Uuid::new_v4().to_string();
    let observation = json!({
        "resourceType": "Observation",
        "status": "final",
        "code": { "text": "puls" },
        "subject": { "reference": "Patient/pat-carla" },
        "valueQuantity": { "value": 64, "unit": "/min" },
        "note": [{ "text": marker }],
    });
    let answer = gateway
        .client()
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(observation),
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text());
    let location = answer.headers["location"].to_str().unwrap().to_owned();
    let expected_prefix = format!("{}/Observation/", gateway.base_url);
    assert!(location.starts_with(&expected_prefix), "{location}");
    let id = location[expected_prefix.len()..].split('/').next().unwrap();
    let (status, stored) = backend_get(&format!("Observation/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["note"][0]["text"], marker);
}

#[tokio::test]
async fn oversized_body_gets_413() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[limits]\nmax_body_bytes = 1024\n".into(),
        ..Default::default()
    });
    let token = gateway.token(json!({ "scope": "user/Observation.cruds" }));
    let big = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x".repeat(4096) } });
    let answer = gateway
        .client()
        .send(request(
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

#[tokio::test]
async fn unreachable_backend_gets_502_and_not_ready() {
    // Port 1 (tcpmux): privileged and unused, so nothing listens there and no other test can
    // take it in between (a port that was just free can be handed to another test).
    let port = 1;
    let gateway = Gateway::start_with(Options {
        backend_url: Some(format!("http://127.0.0.1:{port}/fhir/R4")),
        ..Default::default()
    });
    let client = gateway.client();
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&gateway.token(json!({}))))
        .await
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.detail_code(), "backend-unreachable");
    assert!(
        !answer.text().contains(&format!("127.0.0.1:{port}")),
        "backend address leaked: {}",
        answer.text()
    );
    assert_eq!(client.get("/readyz", None).await.unwrap().status, 503);
    assert_eq!(client.get("/healthz", None).await.unwrap().status, 200);
}
