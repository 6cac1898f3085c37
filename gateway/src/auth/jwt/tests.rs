//! Tests of the token verifier: good tokens, claim problems told apart, `alg` confusion refused
//! before any key, tampering, leeway, the verified-token cache and certificate binding. Test code
//! only: the verifier may not depend on anything here.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
use serde_json::json;

use super::*;
use crate::auth::issuer_key::IssuerKey;

const ISS: &str = "https://issuer.test";
const AUD: &str = "https://fhir.test/fhir";

struct Fixture {
    verifier: TokenVerifier,
    key: IssuerKey,
    peer: Arc<PeerIdentity>,
    _dir: tempfile::TempDir,
}

fn fixture(require_binding: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = IssuerKey::generate("k1").unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, key.jwks()).unwrap();
    let config = IssuerConfig {
        jwks_file: Some(jwks_file),
        algorithms: vec!["ES256".into(), "RS256".into()],
        leeway: Duration::from_secs(5),
        require_certificate_binding: require_binding,
        ..IssuerConfig::new(ISS, vec![AUD.into()])
    };
    let pki = portvagt_certs::DevPki::generate().unwrap();
    let peer = Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).unwrap());
    Fixture {
        verifier: TokenVerifier::new(&[config], Arc::new(crate::metrics::Metrics::new())).unwrap(),
        key,
        peer,
        _dir: dir,
    }
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> serde_json::Value {
    json!({ "iss": ISS, "aud": AUD, "sub": "user-1", "exp": now() + 300, "scope": "openid user/Patient.rs", "jti": "j1" })
}

fn sign(fixture: &Fixture, claims: &serde_json::Value) -> String {
    fixture.key.sign(claims).unwrap()
}

#[test]
fn good_token_yields_principal_with_scopes() {
    let f = fixture(false);
    let principal = f
        .verifier
        .verify_with_held_keys(&sign(&f, &claims()), &f.peer, false)
        .unwrap();
    assert_eq!(principal.subject(), "user-1");
    assert_eq!(principal.scopes().iter().count(), 1);
    assert!(!principal.certificate_bound());
}

#[test]
fn claim_problems_are_told_apart() {
    let f = fixture(false);
    let cases: Vec<(serde_json::Value, AuthnError)> = vec![
        (json!({ "exp": now() - 60 }), AuthnError::Expired),
        (json!({ "nbf": now() + 600 }), AuthnError::NotYetValid),
        (
            json!({ "aud": "https://other.test" }),
            AuthnError::WrongAudience,
        ),
        (
            json!({ "iss": "https://evil.test" }),
            AuthnError::UnknownIssuer,
        ),
        (json!({ "sub": null }), AuthnError::MissingClaim),
        (json!({ "exp": null }), AuthnError::MissingClaim),
    ];
    for (patch, expected) in cases {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
                .unwrap_err(),
            expected,
            "{patch}"
        );
    }
}

#[test]
fn patient_claim_must_be_a_fhir_id() {
    let f = fixture(false);
    for bad in [
        "",
        "pat anne",
        "pat-anne&patient=pat-bo",
        "Patient/pat-anne",
    ] {
        let mut c = claims();
        c["patient"] = json!(bad);
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
                .unwrap_err(),
            AuthnError::InvalidClaim,
            "{bad:?}"
        );
    }
    let mut c = claims();
    c["patient"] = json!("pat-anne");
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
            .unwrap()
            .patient(),
        Some("pat-anne")
    );
}

#[test]
fn a_cached_token_is_still_checked_against_the_connection_its_expiry_and_the_keys() {
    let f = fixture(false);
    let lookups = |result: &str| {
        f.verifier
            .metrics
            .jwt_cache
            .with_label_values(&[result])
            .get()
    };
    let mut c = claims();
    c["cnf"] = json!({ "x5t#S256": f.peer.thumbprint_sha256() });
    let token = sign(&f, &c);
    for _ in 0..3 {
        let principal = f
            .verifier
            .verify_with_held_keys(&token, &f.peer, false)
            .unwrap();
        assert!(principal.certificate_bound());
        assert_eq!(principal.subject(), "user-1");
    }
    assert_eq!((lookups("miss"), lookups("hit")), (1, 2));

    // The same (cached) token on another client's connection.
    let other = portvagt_certs::DevPki::generate().unwrap();
    let other_peer = Arc::new(PeerIdentity::from_verified_leaf(&other.client.cert_der).unwrap());
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&token, &other_peer, false)
            .unwrap_err(),
        AuthnError::CertificateMismatch
    );
    assert_eq!(
        lookups("hit"),
        3,
        "found in the cache, refused all the same"
    );

    // Past exp + leeway, a cached token is expired.
    let mut c = claims();
    c["exp"] = json!(now() - 4);
    let short = sign(&f, &c);
    f.verifier
        .verify_with_held_keys(&short, &f.peer, false)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2_200));
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&short, &f.peer, false)
            .unwrap_err(),
        AuthnError::Expired
    );

    // The issuer drops the key: a token it signed is refused, cached or not.
    let Some(Keys::File { path, .. }) = &f.verifier.issuers[ISS].keys else {
        panic!("file keys");
    };
    std::fs::write(path, IssuerKey::generate("k2").unwrap().jwks()).unwrap();
    assert!(f.verifier.reload_key_files().is_empty());
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&token, &f.peer, false)
            .unwrap_err(),
        AuthnError::UnknownKey
    );
}

#[test]
fn expiry_within_leeway_is_accepted() {
    let f = fixture(false);
    let mut c = claims();
    c["exp"] = json!(now() - 2);
    assert!(
        f.verifier
            .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
            .is_ok()
    );
}

#[test]
fn alg_none_and_hmac_are_refused_before_any_key() {
    let f = fixture(false);
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg":"none","typ":"JWT"})),
        b64(claims())
    );
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&none, &f.peer, false)
            .unwrap_err(),
        AuthnError::AlgorithmNotAllowed
    );
    // HMAC "signed" with the issuer's public JWKS as the secret.
    let hs = encode(
        &JwtHeader::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(f.key.jwks().as_bytes()),
    )
    .unwrap();
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&hs, &f.peer, false)
            .unwrap_err(),
        AuthnError::AlgorithmNotAllowed
    );
}

#[test]
fn wrong_key_tampering_and_garbage_are_refused() {
    let f = fixture(false);
    let other = IssuerKey::generate("k1").unwrap();
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&other.sign(&claims()).unwrap(), &f.peer, false)
            .unwrap_err(),
        AuthnError::BadSignature
    );

    let token = sign(&f, &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let mut tampered = claims();
    tampered["scope"] = json!("system/*.cruds");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tampered.to_string());
    parts[1] = &payload;
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&parts.join("."), &f.peer, false)
            .unwrap_err(),
        AuthnError::BadSignature
    );

    let unknown_kid = IssuerKey::generate("k2").unwrap().sign(&claims()).unwrap();
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&unknown_kid, &f.peer, false)
            .unwrap_err(),
        AuthnError::UnknownKey
    );

    for garbage in ["", "a.b", "a.b.c.d", "!!!.???.###", "e30.e30.e30"] {
        assert!(
            f.verifier
                .verify_with_held_keys(garbage, &f.peer, false)
                .is_err(),
            "{garbage}"
        );
    }
}

#[test]
fn certificate_binding_is_enforced() {
    let f = fixture(false);
    let mut c = claims();
    c["cnf"] = json!({ "x5t#S256": f.peer.thumbprint_sha256() });
    assert!(
        f.verifier
            .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
            .unwrap()
            .certificate_bound()
    );
    c["cnf"] = json!({ "x5t#S256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" });
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
            .unwrap_err(),
        AuthnError::CertificateMismatch
    );

    c["cnf"] = json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" });
    assert_eq!(
        f.verifier
            .verify_with_held_keys(&sign(&f, &c), &f.peer, false)
            .unwrap_err(),
        AuthnError::UnsupportedConfirmation
    );

    let strict = fixture(true);
    assert_eq!(
        strict
            .verifier
            .verify_with_held_keys(&sign(&strict, &claims()), &strict.peer, false)
            .unwrap_err(),
        AuthnError::CertificateBindingRequired
    );
}

#[test]
fn a_member_given_twice_or_a_critical_extension_is_refused_though_signed() {
    let f = fixture(false);
    let header = r#"{"typ":"at+jwt","alg":"ES256","kid":"k1""#;
    let claims = |extra: &str| {
        format!(
            r#"{{"iss":"{ISS}","aud":"{AUD}","sub":"user-1","exp":{},"scope":"openid user/Patient.rs"{extra}}}"#,
            now() + 300
        )
    };
    let verify = |header: &str, claims: &str| {
        let token = f
            .key
            .sign_parts(header.as_bytes(), claims.as_bytes())
            .unwrap();
        f.verifier.verify_with_held_keys(&token, &f.peer, false)
    };
    // Written by hand, as an issuer would: accepted.
    assert!(verify(&format!("{header}}}"), &claims("")).is_ok());
    let refused = [
        // Bound to a certificate, then not: last-wins would make it a bearer token.
        (
            format!("{header}}}"),
            claims(r#","cnf":{"x5t#S256":"AAAA"},"cnf":null"#),
            AuthnError::DuplicateMember,
        ),
        (
            format!("{header}}}"),
            claims(r#","scope":"openid user/*.cruds""#),
            AuthnError::DuplicateMember,
        ),
        // Deeper, and spelled with an escape.
        (
            format!("{header}}}"),
            claims(r#","cnf":{"x5t#S256":"AAAA","x5t\u0023S256":"BBBB"}"#),
            AuthnError::DuplicateMember,
        ),
        (
            format!(r#"{header},"cty":"a","cty":"b"}}"#),
            claims(""),
            AuthnError::DuplicateMember,
        ),
        // A member read to pick the issuer and its key, given twice.
        (
            format!(r#"{header},"typ":"JWT"}}"#),
            claims(""),
            AuthnError::DuplicateMember,
        ),
        (
            format!(r#"{header},"kid":"k1"}}"#),
            claims(""),
            AuthnError::DuplicateMember,
        ),
        (
            format!("{header}}}"),
            claims(&format!(r#","iss":"{ISS}""#)),
            AuthnError::DuplicateMember,
        ),
        (
            format!(r#"{header},"crit":null}}"#),
            claims(""),
            AuthnError::CriticalHeader,
        ),
        // Extensions the gateway does not understand, marked critical.
        (
            format!(r#"{header},"crit":["b64"],"b64":false}}"#),
            claims(""),
            AuthnError::CriticalHeader,
        ),
        (
            format!(r#"{header},"crit":["exp"],"exp":1}}"#),
            claims(""),
            AuthnError::CriticalHeader,
        ),
        (
            format!(r#"{header},"crit":[]}}"#),
            claims(""),
            AuthnError::CriticalHeader,
        ),
    ];
    for (header, claims, expected) in refused {
        assert_eq!(
            verify(&header, &claims).err(),
            Some(expected),
            "{header} {claims}"
        );
    }
}

#[test]
fn an_issuer_that_requires_access_tokens_refuses_other_jwts() {
    let dir = tempfile::tempdir().unwrap();
    let key = IssuerKey::generate("k1").unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, key.jwks()).unwrap();
    let verifier = |require_typ| {
        let config = IssuerConfig {
            jwks_file: Some(jwks_file.clone()),
            algorithms: vec!["ES256".into()],
            require_typ,
            ..IssuerConfig::new(ISS, vec![AUD.into()])
        };
        TokenVerifier::new(&[config], Arc::new(crate::metrics::Metrics::new())).unwrap()
    };
    let pki = portvagt_certs::DevPki::generate().unwrap();
    let peer = Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).unwrap());
    let claims = claims().to_string();
    let token = |typ: Option<&str>| {
        let header = match typ {
            Some(typ) => format!(r#"{{"typ":"{typ}","alg":"ES256","kid":"k1"}}"#),
            None => r#"{"alg":"ES256","kid":"k1"}"#.to_owned(),
        };
        key.sign_parts(header.as_bytes(), claims.as_bytes())
            .unwrap()
    };
    let (strict, lenient) = (verifier(true), verifier(false));
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "AT+JWT",
        "Application/At+Jwt",
    ] {
        let token = token(Some(typ));
        assert!(
            strict.verify_with_held_keys(&token, &peer, false).is_ok(),
            "{typ}"
        );
    }
    for typ in [
        Some("text/at+jwt"),
        Some("applicationXat+jwt"),
        Some("application/at+jwt;v=1"),
        Some(" at+jwt"),
        Some("application/application/at+jwt"),
        Some("portvagt-identity+jwt"),
        Some("JWT"),
        None,
        Some("id_token+jwt"),
        Some("at+jwtx"),
        Some(""),
    ] {
        let token = token(typ);
        assert_eq!(
            strict.verify_with_held_keys(&token, &peer, false).err(),
            Some(AuthnError::WrongTokenType),
            "{typ:?}"
        );
        assert!(
            lenient.verify_with_held_keys(&token, &peer, false).is_ok(),
            "{typ:?}: off by default"
        );
    }
}
