//! The conformance suite (crate portvagt-conformance) against a local deployment: every case
//! passes. And against a "gateway" that forwards everything unchecked: the suite fails the
//! cases that catch that, so it is shown able to fail.

use portvagt_certs::DevPki;
use portvagt_certs::saml::SosiCard;
use portvagt_conformance::client::Identity;
use portvagt_conformance::{Settings, Tokens};
use serde_json::json;

use portvagt::demo::BackendProcess;

use crate::support::{Gateway, Options, Repository};

fn identity(cert: &portvagt_certs::IssuedCert) -> Identity {
    Identity {
        cert_pem: cert.cert_pem.clone(),
        key_pem: cert.key_pem.clone(),
    }
}

/// A gateway with everything the suite exercises: audit shipped to a repository, token
/// exchange, citizens' own blocks (written to a backend of its own).
fn deployment(repository: &Repository, backend: &BackendProcess) -> Gateway {
    let key = portvagt::auth::issuer_key::IssuerKey::generate("portvagt-conf").unwrap();
    let dir = tempfile::tempdir().unwrap();
    key.save(dir.path()).unwrap();
    let pem = std::fs::read_to_string(dir.path().join("issuer.key")).unwrap();
    Gateway::start_with(Options {
        files: vec![("exchange.key".into(), pem)],
        extra_config:
            "[consent]\n\n[relationship]\nroles = [\"7170\"]\nsource = \"fhir\"\n\n[token_exchange]\nissuer = \"https://portvagt.conformance.invalid\"\n\
                       signing_key = \"exchange.key\"\ntrusted_sts = [{ certificate = \"pki/sts.crt\", issuers = [\"TEST1-NSP-STS\", \"http://sts.sundhedsdatastyrelsen.dk/\"] }]\n\n\
                       [citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"https://minlog.test.portvagt.invalid/fhir\"]\nblocks = true\n"
                .into(),
        backend_url: Some(backend.base_url().to_owned()),
        ..repository.gateway_options("batch_size = 5")
    })
}

fn settings(gateway: &Gateway, target: &str) -> Settings {
    let pki = &gateway.pki;
    let thumbprint = portvagt::tls::PeerIdentity::from_verified_leaf(&pki.client.cert_der)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    let now = jsonwebtoken::get_current_timestamp();
    let foreign = DevPki::generate().unwrap();
    // AUTH-17 and AUTH-18: the issuer's own header, and a bound user's claims.
    let header: serde_json::Value = {
        use base64::Engine as _;
        let token = gateway.token(json!({}));
        let part = token.split('.').next().unwrap().to_owned();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let claims = gateway.claims(json!({ "scope": "user/*.rs", "cnf": { "x5t#S256": thumbprint } }));
    let strict = portvagt_conformance::strict_tokens(&header, &claims, |header, claims| {
        gateway.issuer.sign_parts(header, claims)
    })
    .unwrap();
    Settings {
        base_url: target.to_owned(),
        ca_pem: pki.ca.certificate().cert_pem.clone(),
        identity: identity(&pki.client),
        other_identity: Some(identity(&pki.employee)),
        foreign_identity: Some(identity(&foreign.client)),
        tokens: Tokens {
            user: Some(gateway.token(json!({
                "scope": "user/*.rs", "cnf": { "x5t#S256": thumbprint },
            }))),
            // Carla: she has blocked Dr. Kjær (NS363) in the sample data.
            patient: Some(gateway.token(json!({
                "scope": "patient/*.rs", "patient": "pat-carla", "fhirUser": "Patient/pat-carla",
            }))),
            narrow: Some(gateway.token(json!({ "scope": "user/Observation.rs" }))),
            expired: Some(gateway.token(json!({
                "scope": "user/*.rs", "iat": now - 7200, "exp": now - 3600,
            }))),
            wrong_audience: Some(gateway.token(json!({
                "scope": "user/*.rs", "aud": "https://another-service.invalid",
            }))),
            granular: Some(gateway.token(json!({
                "scope": "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            }))),
            v1: Some(gateway.token(json!({ "scope": "user/Observation.read" }))),
            blocked: Some(gateway.token(json!({
                "scope": "user/*.rs", "authorization_id": "NS363", "purpose_of_use": "TREATMENT",
            }))),
            emergency: Some(gateway.token(json!({
                "scope": "user/*.rs", "authorization_id": "NS363", "purpose_of_use": "EMERGENCY",
            }))),
            // Dr. Kjær treats Anne (the sample data's EpisodeOfCare), not Bo.
            bound: Some(gateway.token(json!({
                "scope": "user/*.rs user/Observation.c", "authorization_id": "NS363",
                "role": "7170", "fhirUser": "Practitioner/prac-ns363", "purpose_of_use": "TREATMENT",
            }))),
            bound_emergency: Some(gateway.token(json!({
                "scope": "user/*.rs user/Observation.c", "authorization_id": "NS363",
                "role": "7170", "fhirUser": "Practitioner/prac-ns363", "purpose_of_use": "EMERGENCY",
            }))),
            citizen: Some(gateway.citizen_token(json!({
                "scope": "patient/*.rs patient/Consent.cu", "patient": "pat-carla",
                "fhirUser": "Patient/pat-carla",
            }))),
            colleague: Some(gateway.token(json!({
                "scope": "user/*.rs", "authorization_id": "XY123", "name": "Jens Holm",
                "purpose_of_use": "TREATMENT",
            }))),
            duplicate_member: Some(strict.0),
            critical_header: Some(strict.1),
        },
        own_patient: Some("pat-carla".into()),
        other_patient: Some("pat-bo".into()),
        sosi_card: Some(
            SosiCard::system(&pki.client.cert_der)
                .sign(&pki.sts)
                .unwrap(),
        ),
        blocked_patient: Some("pat-carla".into()),
        citizen_base_url: None,
        related_patient: Some("pat-anne".into()),
        unrelated_patient: Some("pat-bo".into()),
    }
}

#[tokio::test]
async fn the_suite_passes_against_a_local_deployment() {
    let repository = Repository::start();
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let gateway = deployment(&repository, &backend);
    let mut settings = settings(&gateway, &gateway.base_url);
    settings.citizen_base_url = Some(format!("https://{}/fhir", gateway.citizen_addr()));
    let report = portvagt_conformance::run(settings, &[], |_, _, _| {})
        .await
        .unwrap();
    let (passed, failed, skipped) = report.counts();
    assert!(report.all_passed(), "{}", report.summary());
    assert_eq!(skipped, 0, "{}", report.summary());
    assert_eq!(failed, 0);
    assert!(passed >= 80, "{passed} cases");
}

/// A TLS front that checks client certificates, then forwards every request to the backend
/// unchanged: no token check, no scopes, no compartment. What a misconfigured deployment
/// looks like from outside.
async fn passthrough(pki: &DevPki, backend: &str) -> String {
    crate::support::TlsFront::start(pki, backend).await.url
}

#[tokio::test]
async fn the_suite_fails_a_deployment_that_does_not_enforce() {
    let gateway = Gateway::start();
    // What the cases write through it goes to a backend of its own.
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let target = passthrough(&gateway.pki, backend.base_url()).await;
    let mut settings = settings(&gateway, &target);
    settings.sosi_card = None;
    // Its "citizen listener" is the same front: it demands a certificate, and lets all through.
    settings.citizen_base_url = Some(target.clone());
    let only = ["TLS", "AUTH", "SCOPE", "PAT", "ERR", "CITIZEN"].map(String::from);
    let report = portvagt_conformance::run(settings, &only, |_, _, _| {})
        .await
        .unwrap();
    assert!(!report.all_passed());
    let failed = report.failed();
    for id in [
        "AUTH-02",
        "AUTH-04",
        "AUTH-05",
        "AUTH-07",
        "AUTH-11",
        "AUTH-17",
        "AUTH-18",
        "SCOPE-02",
        "SCOPE-05",
        "PAT-02",
        "PAT-03",
        "PAT-24",
        "ERR-01",
        "CITIZEN-01",
        "CITIZEN-03",
        "CITIZEN-04",
        "CITIZEN-09",
        "CITIZEN-10",
        "CITIZEN-11",
        "CITIZEN-12",
        "CITIZEN-13",
    ] {
        assert!(
            failed.contains(&id),
            "{id} should fail:\n{}",
            report.summary()
        );
    }
    // The transport is in order, and the suite says so.
    assert!(!failed.contains(&"TLS-02"), "{}", report.summary());
}
