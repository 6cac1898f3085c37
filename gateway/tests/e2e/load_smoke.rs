//! A short load smoke test (the full runs are in load-tests/): sustained keep-alive load over
//! mTLS, HTTP/1.1 and HTTP/2, with token checks, policy and the audit spool on, must not see a
//! single failed request.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use portvagt_load::{Plan, TlsPlan, Variant};
use serde_json::json;

use crate::support::Gateway;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_sees_no_failed_request() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    for http2 in [false, true] {
        let plan = Plan {
            url: format!("{}/Patient/pat-anne", gateway.base_url)
                .replace("127.0.0.1", "localhost")
                .parse()
                .unwrap(),
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
            )],
            connections: 16,
            duration: Duration::from_secs(4),
            rate: None,
            http2,
            tls: Some(TlsPlan {
                ca_pem: gateway.pki.ca.certificate().cert_pem.clone(),
                client: Some((
                    gateway.pki.client.cert_pem.clone(),
                    gateway.pki.client.key_pem.clone(),
                )),
            }),
            // Over HTTP/2, a mix: two callers, two patients, a read and a search, in turn.
            mix: std::sync::Arc::new(if http2 {
                let other = gateway.token(json!({ "sub": "another.user", "scope": "user/*.rs" }));
                [
                    ("/fhir/Patient/pat-anne", &token),
                    ("/fhir/Observation?patient=pat-bo&_count=5", &other),
                    ("/fhir/Patient/pat-bo", &other),
                ]
                .into_iter()
                .map(|(path, token)| Variant {
                    path: path.to_owned(),
                    headers: vec![(
                        HeaderName::from_static("authorization"),
                        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
                    )],
                })
                .collect()
            } else {
                Vec::new()
            }),
        };
        let outcome = portvagt_load::run(plan).await.unwrap();
        assert_eq!(
            outcome.errors, 0,
            "http2 {http2}: {:?}",
            outcome.error_samples
        );
        assert!(
            outcome.ok > 100,
            "http2 {http2}: only {} answered",
            outcome.ok
        );
    }
    // Every answered request has its audit record.
    assert!(gateway.audit_events().len() > 200);
    // The mix was sent: every one of its requests, by its own caller.
    let log = gateway.access_log();
    for (path, principal) in [
        ("/fhir/Observation", "another.user"),
        ("/fhir/Patient/pat-bo", "another.user"),
    ] {
        assert!(
            log.iter()
                .any(|line| line["path"] == path && line["principal"] == principal),
            "{path} by {principal}"
        );
    }
}
