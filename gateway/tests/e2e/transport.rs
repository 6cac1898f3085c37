//! Mutual TLS: who may even open a connection.

use portvagt_certs::{CertificateAuthority, ClientSubject};

use crate::support::{Client, Gateway, metric_value};

/// The metric's value once it has one: the server counts a failed handshake after the client
/// has already seen it fail, so the count may lag the client by a moment.
async fn metric(gateway: &Gateway, line_prefix: &str) -> Option<f64> {
    for _ in 0..40 {
        let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
        if let Some(value) = metric_value(&metrics, line_prefix) {
            return Some(value);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn the_organisation_certificate_gets_through() {
    let gateway = Gateway::start();
    let answer = gateway.client().get("/healthz", None).await.unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn no_client_certificate_is_refused_at_handshake() {
    let gateway = Gateway::start();
    let error = gateway
        .client_with(None)
        .get("/healthz", None)
        .await
        .unwrap_err();
    assert!(
        error.contains("handshake") || error.contains("request") || error.contains("alert"),
        "{error}"
    );
    let refused = metric(
        &gateway,
        "portvagt_tls_handshake_failures_total{reason=\"no-client-certificate\"}",
    )
    .await;
    assert_eq!(refused, Some(1.0));
}

#[tokio::test]
async fn revoked_certificate_is_refused() {
    let gateway = Gateway::start();
    let error = gateway
        .client_with(Some(&gateway.pki.revoked))
        .get("/healthz", None)
        .await
        .unwrap_err();
    assert!(!error.is_empty());
    let refused = metric(
        &gateway,
        "portvagt_tls_handshake_failures_total{reason=\"revoked\"}",
    )
    .await;
    assert_eq!(refused, Some(1.0), "the refusal must be for revocation");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let gateway = Gateway::start();
    let foreign_ca = CertificateAuthority::new("Someone Else's CA").unwrap();
    let foreign = foreign_ca
        .issue_client(&ClientSubject::Organisation {
            system_name: "Impostor".into(),
            organisation: "Region Demo Sundhed".into(),
            cvr: portvagt_certs::DEMO_CVR.into(),
            uuid: uuid::Uuid::new_v4(),
        })
        .unwrap();
    let error = gateway
        .client_with(Some(&foreign))
        .get("/healthz", None)
        .await
        .unwrap_err();
    assert!(!error.is_empty());
    let refused = metric(
        &gateway,
        "portvagt_tls_handshake_failures_total{reason=\"unknown-issuer\"}",
    )
    .await;
    assert_eq!(refused, Some(1.0));
}

#[tokio::test]
async fn http2_is_served() {
    let gateway = Gateway::start();
    let client = Client::with_alpn(
        gateway.addr,
        &gateway.pki.ca.certificate().cert_pem,
        Some(&gateway.pki.client),
        vec![b"h2".to_vec()],
    );
    let token = gateway.token(serde_json::json!({}));
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["id"], "pat-anne");
}
