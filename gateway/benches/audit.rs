//! Benchmarks of the audit record's CPU work on the request path: building the BALP
//! AuditEvents for one access and serializing them for the spool (the fsync is the spool
//! writer's, measured end to end by the load tests). A read about one patient, and a search
//! whose answer spans 20 patients (20 events, BALP PatientQuery).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portvagt::audit::event::{AccessFacts, AccessKind, AuditSource, audit_events};
use portvagt::auth::TokenVerifier;
use portvagt::auth::issuer_key::IssuerKey;
use portvagt::config::IssuerConfig;
use portvagt::tls::PeerIdentity;
use portvagt_policy::classify;
use serde_json::json;

fn build_events(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = IssuerKey::generate("bench-1").expect("key");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, key.jwks()).expect("write jwks");
    let verifier = TokenVerifier::new(
        &[IssuerConfig {
            jwks_file: Some(jwks_file),
            ..IssuerConfig::new(
                "https://issuer.bench",
                vec!["https://fhir.bench/fhir".into()],
            )
        }],
        Arc::new(portvagt::metrics::Metrics::new()),
    )
    .expect("verifier");
    let pki = portvagt_certs::DevPki::generate().expect("pki");
    let peer = Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).expect("peer"));
    let now = jsonwebtoken::get_current_timestamp();
    let token = key
        .sign(&json!({
            "iss": "https://issuer.bench", "aud": "https://fhir.bench/fhir", "sub": "mette.kjaer",
            "exp": now + 3600, "jti": "bench", "client_id": "journalsystem", "scope": "user/*.rs",
            "name": "Mette Kjær", "role": "7170", "purpose_of_use": "TREATMENT",
            "authorization_id": "NS363", "cpr": "0501792275",
        }))
        .expect("token");
    let principal = verifier
        .verify_with_held_keys(&token, &peer, false)
        .expect("principal");
    let source = AuditSource {
        observer: "portvagt-bench".into(),
        site: "https://fhir.bench/fhir".into(),
    };
    let read = classify("GET", "Observation/obs-1", None).expect("read");
    let search = classify("GET", "Observation", Some("code=4548-4&_count=100")).expect("search");
    let one = vec!["pat-anne".to_owned()];
    let twenty: Vec<String> = (0..20).map(|i| format!("pat-{i}")).collect();
    let cases = [
        (
            "audit_events/read_one_patient",
            &read,
            &one,
            "/fhir/Observation/obs-1",
        ),
        (
            "audit_events/search_twenty_patients",
            &search,
            &twenty,
            "/fhir/Observation?code=4548-4&_count=100",
        ),
    ];
    for (name, request, patients, target) in cases {
        c.bench_function(name, |b| {
            b.iter(|| {
                let facts = AccessFacts {
                    request_id: "0f8fad5b-d9cb-469f-a165-70867728950e",
                    trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
                    recorded: time::OffsetDateTime::now_utc(),
                    method: "GET",
                    target,
                    kind: AccessKind::Fhir(Some(request)),
                    status: 200,
                    reason: None,
                    principal: Some(&principal),
                    peer: Some(&peer),
                    client_ip: Some(std::net::IpAddr::from([10, 0, 0, 7])),
                    patients,
                    break_glass: None,
                    bases: &[],
                    citizen_block: None,
                };
                audit_events(black_box(&facts), &source)
            })
        });
    }
}

criterion_group!(benches, build_events);
criterion_main!(benches);
