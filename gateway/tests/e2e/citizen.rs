//! The citizen listener: TLS without client certificates, for citizens' browsers. Only a
//! citizen's own, unbound, patient-context token counts there, and it reaches only their own
//! audit log and what the operator opened; the main listener is unchanged.

use serde_json::{Value, json};

use http::Method;

use crate::support::{CITIZEN_AUDIENCE, Gateway, Options, Repository, request};

fn gateway(repository: &Repository, citizen_extra: &str) -> Gateway {
    Gateway::start_with(Options {
        extra_config: format!(
            "[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"{CITIZEN_AUDIENCE}\"]\n{citizen_extra}"
        ),
        ..repository.gateway_options("")
    })
}

/// Anne's own token, as her browser holds it: patient context, no certificate binding.
fn anne(gateway: &Gateway, scope: &str) -> String {
    gateway.citizen_token(json!({
        "sub": "anne.hansen", "scope": scope, "patient": "pat-anne",
        "fhirUser": "Patient/pat-anne", "client_id": "minlog",
    }))
}

#[tokio::test]
async fn citizens_read_their_own_log_without_a_certificate_and_nothing_else() {
    let repository = Repository::start();
    let gateway = gateway(&repository, "");
    let physician_claims = json!({
        "scope": "user/*.rs", "name": "Mette Kjær", "role": "7170",
        "purpose_of_use": "TREATMENT", "authorization_id": "NS363",
    });
    let physician = gateway.token(physician_claims.clone());
    for patient in ["pat-anne", "pat-bo"] {
        let answer = gateway
            .client()
            .get(&format!("/fhir/Patient/{patient}"), Some(&physician))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    // A professional whose identity provider writes her fhirUser as an absolute URL: her
    // access is in Anne's log all the same (the event is Anne's by its patient entity).
    let absolute = gateway.token(json!({
        "scope": "user/*.rs", "name": "Jens Absalonsen", "role": "7170",
        "purpose_of_use": "TREATMENT", "authorization_id": "AB123",
        "fhirUser": "https://idp.example.dk/fhir/Practitioner/prac-ab123",
    }));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&absolute))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let browser = gateway.citizen_client();
    let token = anne(
        &gateway,
        "launch/patient patient/AuditEvent.rs patient/Patient.rs",
    );

    // Her log, once shipped: the physician's read of her record, not of Bo's.
    let mut events = Vec::new();
    for _ in 0..100 {
        let answer = browser.get("/fhir/AuditEvent", Some(&token)).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        events = answer.json()["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let shipped = |name: &str| events.iter().any(|e| e.to_string().contains(name));
        if shipped("Mette Kjær") && shipped("Jens Absalonsen") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let text = Value::Array(events.clone()).to_string();
    assert!(text.contains("Mette Kjær"), "{text}");
    assert!(text.contains("Jens Absalonsen"), "{text}");
    assert!(text.contains("Patient/pat-anne"), "{text}");
    assert!(!text.contains("pat-bo"), "{text}");

    // Nothing else, though her scopes would allow it on the main listener.
    let refused = browser
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (refused.status.as_u16(), refused.detail_code()),
        (403, "citizen-listener".to_owned())
    );
    // Nor is her browser's token a key to the main listener, even with a client certificate:
    // it is for this listener's audience only (a token for the API is below).
    let not_there = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (not_there.status.as_u16(), not_there.detail_code()),
        (401, "wrong-audience".to_owned())
    );
    // Not another citizen's log, and no writing to her own.
    let others = browser
        .get("/fhir/AuditEvent?patient=pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(others.status, 403, "{}", others.text());
    let write = browser
        .send(request(
            Method::POST,
            "/fhir/AuditEvent",
            Some(&token),
            Some(json!({ "resourceType": "AuditEvent" })),
        ))
        .await
        .unwrap();
    assert_eq!(write.status, 403);

    // A practitioner's certificate-bound token is worthless here (no certificate to match),
    // and an unbound one is not a citizen's.
    let bound = gateway.citizen_token(json!({
        "scope": "user/*.rs",
        "cnf": { "x5t#S256": portvagt::tls::PeerIdentity::from_verified_leaf(&gateway.pki.client.cert_der)
            .unwrap()
            .thumbprint_sha256() },
    }));
    assert_eq!(
        browser
            .get("/fhir/AuditEvent?patient=pat-anne", Some(&bound))
            .await
            .unwrap()
            .status,
        401
    );
    let unbound = gateway.citizen_token(physician_claims);
    let answer = browser
        .get("/fhir/AuditEvent?patient=pat-anne", Some(&unbound))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code()),
        (403, "citizen-listener".to_owned())
    );
    // A practitioner launched in Anne's context is not Anne.
    let launched = gateway.citizen_token(json!({
        "scope": "launch/patient patient/AuditEvent.rs", "patient": "pat-anne",
        "fhirUser": "Practitioner/prac-ns363",
    }));
    assert_eq!(
        browser
            .get("/fhir/AuditEvent", Some(&launched))
            .await
            .unwrap()
            .detail_code(),
        "citizen-listener"
    );

    // Each listener serves its own audience: Anne's token for the API is no key here.
    let for_the_api = gateway.token(json!({
        "sub": "anne.hansen", "scope": "launch/patient patient/AuditEvent.rs patient/Patient.rs",
        "patient": "pat-anne", "fhirUser": "Patient/pat-anne", "client_id": "minlog",
    }));
    let answer = browser
        .get("/fhir/AuditEvent", Some(&for_the_api))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code()),
        (401, "wrong-audience".to_owned())
    );
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&for_the_api))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    // A token naming both listeners' audiences is for neither: which it was meant for cannot
    // be told (a browser's token from an issuer that names the API's audience too).
    let both = gateway.token(json!({
        "sub": "anne.hansen", "scope": "launch/patient patient/AuditEvent.rs patient/Patient.rs",
        "patient": "pat-anne", "fhirUser": "Patient/pat-anne",
        "aud": [crate::support::AUDIENCE, CITIZEN_AUDIENCE],
    }));
    let mtls = gateway.client();
    for (client, path) in [
        (&browser, "/fhir/AuditEvent"),
        (&mtls, "/fhir/Patient/pat-anne"),
    ] {
        let answer = client.get(path, Some(&both)).await.unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code()),
            (401, "wrong-audience".to_owned()),
            "{path}"
        );
    }

    // The operator's endpoints are not here: no metrics, no token exchange.
    let metrics = browser.get("/metrics", Some(&token)).await.unwrap();
    assert_ne!(metrics.status, 200);
    assert!(!metrics.text().contains("portvagt_requests_total"));
    let exchange = browser
        .send(
            http::Request::post("/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"saml-token=AAAA",
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(exchange.status, 401, "{}", exchange.text());
    // Liveness and the SMART document (the page signs in with it) are; readiness, which
    // names what fails, is not.
    assert_eq!(browser.get("/healthz", None).await.unwrap().status, 200);
    assert_ne!(browser.get("/readyz", None).await.unwrap().status, 200);
    assert_eq!(
        browser
            .get("/fhir/.well-known/smart-configuration", None)
            .await
            .unwrap()
            .status,
        200
    );

    // The main listener still asks every client for a certificate.
    assert!(
        gateway
            .client_with(None)
            .get("/healthz", None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let repository = Repository::start();
    let gateway = gateway(&repository, "client_id = \"min-sundhed\"");
    let browser = gateway.citizen_client();
    let page = browser.get("/minlog/", None).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<script src=\"app.js\" defer>"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let settings = browser.get("/minlog/settings.json", None).await.unwrap();
    assert_eq!(settings.json()["clientId"], "min-sundhed");
    assert_eq!(settings.json()["fhirBase"], "/fhir");
    // The page is not on the main listener.
    let main = gateway.client().get("/minlog/", None).await.unwrap();
    assert_ne!(main.status, 200);
}

#[tokio::test]
async fn types_the_operator_opens_are_readable_in_the_citizens_own_compartment() {
    let repository = Repository::start();
    let gateway = gateway(&repository, "resource_types = [\"Observation\"]");
    let browser = gateway.citizen_client();
    let token = anne(
        &gateway,
        "launch/patient patient/Observation.rs patient/AuditEvent.rs",
    );
    let own = browser
        .get("/fhir/Observation?patient=pat-anne&_count=1", Some(&token))
        .await
        .unwrap();
    assert_eq!(own.status, 200, "{}", own.text());
    assert_eq!(own.json()["resourceType"], "Bundle");
    // Its links and full URLs name the citizen listener, where her browser is.
    let citizen_base = format!("https://{}/fhir/", gateway.citizen_addr());
    let bundle = own.json();
    let urls: Vec<&str> = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|link| link["url"].as_str().unwrap())
        .chain(
            bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|entry| entry["fullUrl"].as_str()),
        )
        .collect();
    assert!(urls.len() >= 2, "{bundle}");
    for url in &urls {
        assert!(
            url.starts_with(&citizen_base),
            "{url} is not below {citizen_base}"
        );
    }
    // Followed there, the next page is hers too.
    if let Some(next) = bundle["link"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|link| link["relation"] == "next")
    {
        let path = next["url"]
            .as_str()
            .unwrap()
            .replace(&citizen_base, "/fhir/");
        let page = browser.get(&path, Some(&token)).await.unwrap();
        assert_eq!(page.status, 200, "{}", page.text());
    }
    let others = browser
        .get("/fhir/Observation?patient=pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(others.status, 403);
    // Opened for reading only.
    let write = browser
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(json!({ "resourceType": "Observation", "status": "final",
                         "code": { "text": "x" }, "subject": { "reference": "Patient/pat-anne" } })),
        ))
        .await
        .unwrap();
    assert_eq!(
        (write.status.as_u16(), write.detail_code()),
        (403, "citizen-listener".to_owned())
    );
    // And a type not opened stays closed.
    assert_eq!(
        browser
            .get("/fhir/Condition?patient=pat-anne", Some(&token))
            .await
            .unwrap()
            .detail_code(),
        "citizen-listener"
    );
}

#[tokio::test]
async fn citizens_are_rate_limited_one_by_one_without_certificates() {
    let repository = Repository::start();
    // Limits per certificate: on the citizen listener, where there is none, per citizen.
    let gateway = Gateway::start_with(Options {
        extra_config: "[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"https://minlog.test.portvagt.invalid/fhir\"]\n\n[rate_limit]\nrequests = 2\nwindow = \"600s\"\nkey = \"certificate\"\n".into(),
        ..repository.gateway_options("")
    });
    let browser = gateway.citizen_client();
    let anne = anne(&gateway, "patient/AuditEvent.rs");
    let bo = gateway.citizen_token(json!({
        "sub": "bo.jensen", "scope": "patient/AuditEvent.rs", "patient": "pat-bo",
        "fhirUser": "Patient/pat-bo",
    }));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            browser
                .get("/fhir/AuditEvent", Some(&anne))
                .await
                .unwrap()
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 429]);
    assert_eq!(
        browser
            .get("/fhir/AuditEvent", Some(&bo))
            .await
            .unwrap()
            .status,
        200,
        "another citizen is not held back by Anne"
    );
}
