//! Benchmarks of access-token verification, the per-request authentication hot path: an ES256
//! JWT checked against a key already loaded from the issuer's JWKS (no I/O), cold (a token not
//! seen before: signature and claims verified) and from the verified-token cache (a client
//! reusing its token: hash, lookup, binding and claim mapping), and an opaque token whose
//! introspection answer is cached (the endpoint is asked once, by the warm-up).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portvagt::auth::TokenVerifier;
use portvagt::auth::issuer_key::IssuerKey;
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
    let sign = |jti: &str| {
        key.sign(&json!({
            "iss": "https://issuer.bench", "aud": "https://fhir.bench/fhir", "sub": "mette.kjaer",
            "exp": now + 3600, "iat": now, "jti": jti, "client_id": "journalsystem",
            "scope": "openid fhirUser user/Patient.rs user/Observation.cruds user/Condition.rs",
            "cnf": { "x5t#S256": peer.thumbprint_sha256() },
        }))
        .expect("token")
    };
    let token = sign("bench");
    verifier
        .verify_with_held_keys(&token, &peer, false)
        .expect("the bench token verifies");
    c.bench_function(
        "verify ES256 access token, cert-bound, seen before (cache hit)",
        |b| b.iter(|| verifier.verify_with_held_keys(black_box(&token), black_box(&peer), false)),
    );
    // More distinct tokens than the cache holds, taken in turn: each is long gone from the
    // cache when it comes round again.
    let fresh: Vec<String> = (0..40_000).map(|i| sign(&format!("bench-{i}"))).collect();
    let mut next = 0;
    c.bench_function(
        "verify ES256 access token, cert-bound, not seen before (cold)",
        |b| {
            b.iter(|| {
                next = (next + 1) % fresh.len();
                verifier.verify_with_held_keys(black_box(&fresh[next]), black_box(&peer), false)
            })
        },
    );
}

/// A minimal HTTPS introspection endpoint that calls every token active.
async fn introspection_endpoint(pki: &portvagt_certs::DevPki) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use rustls_pki_types::pem::PemObject as _;
    let chain = vec![rustls_pki_types::CertificateDer::from(
        pki.server.cert_der.clone(),
    )];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(pki.server.key_pem.as_bytes())
        .expect("server key");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|_request| async {
                    let now = jsonwebtoken::get_current_timestamp();
                    let answer = json!({
                        "active": true, "sub": "journalsystem", "client_id": "journalsystem",
                        "aud": "https://fhir.bench/fhir", "exp": now + 3600, "token_type": "Bearer",
                        "scope": "system/Patient.rs system/Observation.rs",
                    });
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(answer.to_string())),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn verify_cached_introspection(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = portvagt_certs::DevPki::generate().expect("pki");
    pki.write_to(dir.path()).expect("pki files");
    std::fs::write(dir.path().join("secret"), "s3cret").expect("secret");
    let addr = runtime.block_on(introspection_endpoint(&pki));
    let verifier = runtime.block_on(async {
        TokenVerifier::new(
            &[IssuerConfig {
                ca_file: Some(dir.path().join("ca.crt")),
                introspection: Some(portvagt::config::IntrospectionConfig {
                    url: format!("https://{addr}/introspect"),
                    client_id: "portvagt".into(),
                    client_secret_file: Some(dir.path().join("secret")),
                    client_secret_env: None,
                    client_cert: None,
                    client_key: None,
                    cache_ceiling: std::time::Duration::from_secs(600),
                    negative_cache: std::time::Duration::from_secs(10),
                    cache_entries: 100_000,
                    token_prefix: None,
                }),
                ..IssuerConfig::new(
                    "https://issuer.bench",
                    vec!["https://fhir.bench/fhir".into()],
                )
            }],
            Arc::new(portvagt::metrics::Metrics::new()),
        )
        .expect("verifier")
    });
    let peer = Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).expect("peer"));
    let token = "lW7fS2mYQp0c9d_kQ3x8ZtV1aB4nR6eJ5uH2gC0oPqs";
    runtime
        .block_on(verifier.verify(token, &peer, false))
        .expect("the endpoint calls the token active");
    c.bench_function("verify opaque token, cached introspection answer", |b| {
        b.iter(|| runtime.block_on(verifier.verify(black_box(token), black_box(&peer), false)))
    });
}

criterion_group!(benches, verify_cached_key, verify_cached_introspection);
criterion_main!(benches);
