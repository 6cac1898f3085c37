//! Benchmarks of access-token verification, the per-request authentication hot path: an ES256
//! JWT checked against a key already loaded from the issuer's JWKS (no I/O).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portvagt::auth::TokenVerifier;
use portvagt::auth::dev_token::IssuerKey;
use portvagt::config::IssuerConfig;
use portvagt::tls::PeerIdentity;
use serde_json::json;

fn verify_cached_key(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = IssuerKey::generate("bench-1").expect("key");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, key.jwks()).expect("write jwks");
    let verifier = TokenVerifier::new(
        &[IssuerConfig {
            jwks_file: Some(jwks_file),
            algorithms: vec!["ES256".into(), "RS256".into()],
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
            "exp": now + 3600, "iat": now, "jti": "bench", "client_id": "journalsystem",
            "scope": "openid fhirUser user/Patient.rs user/Observation.cruds user/Condition.rs",
            "cnf": { "x5t#S256": peer.thumbprint_sha256() },
        }))
        .expect("token");
    verifier
        .verify_with_held_keys(&token, &peer, false)
        .expect("the bench token verifies");
    c.bench_function("verify ES256 access token, cached key, cert-bound", |b| {
        b.iter(|| verifier.verify_with_held_keys(black_box(&token), black_box(&peer), false))
    });
}

criterion_group!(benches, verify_cached_key);
criterion_main!(benches);
