//! Access tokens: RFC 6750 answers for every way a token can be wrong.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portvagt::auth::issuer_key::IssuerKey;
use serde_json::json;

use crate::support::Gateway;

const PATH: &str = "/fhir/Patient/pat-anne";

#[tokio::test]
async fn missing_token_gets_401_with_operation_outcome_and_challenge() {
    let gateway = Gateway::start();
    let answer = gateway.client().get(PATH, None).await.unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.headers["www-authenticate"],
        "Bearer realm=\"portvagt\""
    );
    assert_eq!(
        answer.headers["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    assert_eq!(answer.detail_code(), "missing-token");
    assert_eq!(answer.json()["issue"][0]["code"], "login");
}

#[tokio::test]
async fn bad_tokens_get_401_invalid_token() {
    let gateway = Gateway::start();
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = jsonwebtoken::get_current_timestamp();
    let good = gateway.token(json!({}));
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let claims = b64(gateway.claims(json!({ "scope": "system/*.cruds", "sub": "admin" })));
        format!("{}.{}.{}", parts[0], claims, parts[2])
    };
    let other_pki = portvagt_certs::DevPki::generate().unwrap();
    let other_thumbprint =
        portvagt::tls::PeerIdentity::from_verified_leaf(&other_pki.client.cert_der)
            .unwrap()
            .thumbprint_sha256()
            .to_owned();
    // Header and claims written by hand, as a JSON serializer would not, and signed.
    let header = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(good.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let claims = gateway.claims(json!({})).to_string();
    let signed = |header: &str, claims: &str| {
        gateway
            .issuer
            .sign_parts(header.as_bytes(), claims.as_bytes())
            .unwrap()
    };
    let open = |object: &str| object.trim_end_matches('}').to_owned();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            // Bound to another certificate, then not: kept last, a bearer token.
            "a claim given twice",
            signed(
                &header,
                &format!(
                    r#"{},"cnf":{{"x5t#S256":"{other_thumbprint}"}},"cnf":null}}"#,
                    open(&claims)
                ),
            ),
            "duplicate-member",
        ),
        (
            "a critical header extension",
            signed(
                &format!(r#"{},"crit":["b64"],"b64":false}}"#, open(&header)),
                &claims,
            ),
            "unsupported-critical-header",
        ),
        (
            "expired",
            gateway.token(json!({ "exp": now - 600, "iat": now - 900 })),
            "token-expired",
        ),
        (
            "not yet valid",
            gateway.token(json!({ "nbf": now + 600 })),
            "token-not-yet-valid",
        ),
        (
            "wrong aud",
            gateway.token(json!({ "aud": "https://other.example/fhir" })),
            "wrong-audience",
        ),
        (
            "wrong iss",
            gateway.token(json!({ "iss": "https://evil.example" })),
            "unknown-issuer",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({ "alg": "none", "typ": "JWT" })),
                b64(gateway.claims(json!({})))
            ),
            "algorithm-not-allowed",
        ),
        (
            "HMAC with the public JWKS as secret",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &gateway.claims(json!({})),
                &EncodingKey::from_secret(gateway.issuer.jwks().as_bytes()),
            )
            .unwrap(),
            "algorithm-not-allowed",
        ),
        (
            "wrong key",
            IssuerKey::generate("test-1")
                .unwrap()
                .sign(&gateway.claims(json!({})))
                .unwrap(),
            "bad-signature",
        ),
        (
            "unknown kid",
            IssuerKey::generate("rotated-away")
                .unwrap()
                .sign(&gateway.claims(json!({})))
                .unwrap(),
            "unknown-key",
        ),
        ("tampered payload", tampered, "bad-signature"),
        ("garbage", "not-a-jwt".to_owned(), "malformed-token"),
        (
            "no sub",
            gateway.token(json!({ "sub": null })),
            "missing-claim",
        ),
        (
            "bound to another certificate",
            gateway.token(json!({ "cnf": { "x5t#S256": other_thumbprint } })),
            "certificate-binding-mismatch",
        ),
    ];
    let client = gateway.client();
    for (name, token, code) in cases {
        let answer = client.get(PATH, Some(&token)).await.unwrap();
        assert_eq!(answer.status, 401, "{name}: {}", answer.text());
        assert_eq!(answer.detail_code(), code, "{name}");
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert!(
            !answer.text().contains(&token[..20.min(token.len())]) || token.len() < 20,
            "{name}: token echoed"
        );
    }
}

#[tokio::test]
async fn token_bound_to_this_certificate_is_accepted() {
    let gateway = Gateway::start();
    let thumbprint = portvagt::tls::PeerIdentity::from_verified_leaf(&gateway.pki.client.cert_der)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    let token = gateway.token(json!({ "cnf": { "x5t#S256": thumbprint } }));
    assert_eq!(
        gateway
            .client()
            .get(PATH, Some(&token))
            .await
            .unwrap()
            .status,
        200
    );
    // The same token on a connection with another certificate of the same CA is refused.
    let answer = gateway
        .client_with(Some(&gateway.pki.employee))
        .get(PATH, Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.detail_code(), "certificate-binding-mismatch");
}

#[tokio::test]
async fn issuer_requiring_binding_refuses_unbound_tokens() {
    let gateway = Gateway::start_with(crate::support::Options {
        issuer_extra: "require_certificate_binding = true".into(),
        ..Default::default()
    });
    let answer = gateway
        .client()
        .get(PATH, Some(&gateway.token(json!({}))))
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    assert_eq!(answer.detail_code(), "certificate-binding-required");
}

#[tokio::test]
async fn clock_skew_within_the_leeway_is_tolerated() {
    // The issuer's clock and ours disagree by seconds: within `leeway` (30 s by default) a token
    // just expired or not quite valid yet is still good; beyond it, refused (the test above).
    let gateway = Gateway::start();
    let now = jsonwebtoken::get_current_timestamp();
    for (name, patch) in [
        (
            "expired 10 s ago",
            json!({ "exp": now - 10, "iat": now - 300 }),
        ),
        ("valid in 10 s", json!({ "nbf": now + 10, "iat": now + 10 })),
    ] {
        let answer = gateway
            .client()
            .get("/fhir/Patient/pat-anne", Some(&gateway.token(patch)))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{name}: {}", answer.text());
    }
}

/// Client libraries read the CapabilityStatement before they have a token, as every FHIR
/// server lets them: on the mTLS listener (the certificate still required), that exact path
/// only; every other spelling, and the citizen listener unless opened, still needs a token.
#[tokio::test]
async fn the_capability_statement_is_read_without_a_token_where_opened() {
    let gateway = Gateway::start_with(crate::support::Options {
        extra_config: format!(
            "[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"{}\"]\n",
            crate::support::CITIZEN_AUDIENCE
        ),
        ..crate::support::Options::default()
    });
    let client = gateway.client();
    for path in ["/fhir/metadata", "/fhir/metadata?_format=json&_pretty=true"] {
        let answer = client.get(path, None).await.unwrap();
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert!(
            answer.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/fhir+json"),
            "{path}"
        );
        let statement = answer.json();
        assert_eq!(statement["resourceType"], "CapabilityStatement");
        // What clients are told about security is Portvagt's, and the backend stays unnamed.
        let services: Vec<&str> = statement["rest"][0]["security"]["service"]
            .as_array()
            .unwrap()
            .iter()
            .map(|service| service["coding"][0]["code"].as_str().unwrap())
            .collect();
        assert_eq!(services, ["SMART-on-FHIR", "Certificates"]);
        assert!(
            !answer.text().contains(crate::support::backend_url()),
            "{path}: the backend's address"
        );
        assert_eq!(
            statement["software"],
            json!({ "name": "Portvagt" }),
            "{path}"
        );
        if let Some(implementation) = statement.get("implementation") {
            assert_eq!(
                implementation["url"].as_str(),
                Some(gateway.base_url.as_str()),
                "{path}"
            );
        }
    }
    // With a token, the usual way: a good one reads it, a bad one is refused.
    let token = gateway.token(json!({}));
    let proxied = client.get("/fhir/metadata", Some(&token)).await.unwrap();
    assert_eq!(proxied.status, 200);
    // Proxied, the backend's address is replaced too.
    assert!(
        !proxied.text().contains(crate::support::backend_url()),
        "the backend's address, proxied"
    );
    assert_eq!(
        proxied.json()["implementation"]["url"].as_str(),
        Some(gateway.base_url.as_str())
    );
    // Nor which product and version answers behind the gateway.
    assert_eq!(proxied.json()["software"], json!({ "name": "Portvagt" }));
    assert!(!proxied.text().contains("Medplum"), "{}", proxied.text());
    assert_eq!(
        client
            .get("/fhir/metadata", Some("not-a-jwt"))
            .await
            .unwrap()
            .detail_code(),
        "malformed-token"
    );
    // Any other spelling or query goes through authentication.
    for path in [
        "/fhir/metadata/",
        "/fhir//metadata",
        "/fhir/%6Detadata",
        "/fhir/Metadata",
        "/fhir/metadata;x",
        "/fhir/Patient/../metadata",
        "/fhir/./metadata",
        "/fhir/metadata?mode=terminology",
        "/fhir/metadata?_format=json&_count=1",
        // XML is converted for authenticated callers only.
        "/fhir/metadata?_format=xml",
        "/fhir/metadata?_format=application/fhir%2Bxml",
        "/fhir/metadata?_format=turtle",
        "/fhir/Patient/metadata",
        "/metadata",
    ] {
        let answer = client.get(path, None).await.unwrap();
        assert_eq!(answer.status, 401, "{path}: {}", answer.text());
    }
    let posted = client
        .send(crate::support::request(
            http::Method::POST,
            "/fhir/metadata",
            None,
            Some(json!({})),
        ))
        .await
        .unwrap();
    assert_eq!(posted.status, 401);
    // The certificate is still required.
    assert!(
        gateway
            .client_with(None)
            .get("/fhir/metadata", None)
            .await
            .is_err()
    );
    // The citizen listener, reachable without a certificate, keeps it closed by default.
    let browser = gateway.citizen_client();
    assert_eq!(
        browser.get("/fhir/metadata", None).await.unwrap().status,
        401
    );
}

#[tokio::test]
async fn the_capability_statement_needs_a_token_where_not_opened() {
    let gateway = Gateway::start_with(crate::support::Options {
        server_extra: "metadata_without_token = false".into(),
        ..crate::support::Options::default()
    });
    let answer = gateway.client().get("/fhir/metadata", None).await.unwrap();
    assert_eq!(answer.status, 401, "{}", answer.text());
}
