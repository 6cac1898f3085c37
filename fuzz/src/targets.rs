// The fuzz targets' checks: each takes arbitrary bytes, must never panic, hang or allocate
// without bound, and asserts what must hold of any input. Included by `fuzz/src/lib.rs` (the
// libFuzzer targets) and by `gateway/tests/fuzz_regressions.rs` (CI's replay of the corpora).

use std::sync::{Arc, OnceLock};

use portvagt::auth::TokenVerifier;
use portvagt::auth::issuer_key::IssuerKey;
use portvagt::auth::saml::{AssertionPolicy, TrustedSigner};
use portvagt::config::{Config, IssuerConfig};
use portvagt::tls::PeerIdentity;
use portvagt_policy::compartment::patients_in_answer;
use portvagt_policy::{FilterMode, Filtered, ResponseCheck, ScopeSet, check_response};

const ISSUER: &str = "https://issuer.fuzz.portvagt.invalid";
const AUDIENCE: &str = "https://fhir.fuzz.portvagt.invalid/fhir";

/// Keys, certificates and verifiers, made once per process.
pub struct Fixture {
    pub pki: portvagt_certs::DevPki,
    pub peer: Arc<PeerIdentity>,
    pub issuer: IssuerKey,
    pub verifier: TokenVerifier,
    pub saml: AssertionPolicy,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let pki = portvagt_certs::DevPki::generate().expect("dev PKI");
        let peer = Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).expect("peer"));
        let issuer = IssuerKey::generate("fuzz-1").expect("issuer key");
        let dir = std::env::temp_dir().join(format!("portvagt-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jwks_file = dir.join("jwks.json");
        std::fs::write(&jwks_file, issuer.jwks()).expect("jwks");
        let verifier = TokenVerifier::new(
            &[IssuerConfig {
                jwks_file: Some(jwks_file),
                algorithms: vec!["ES256".into(), "RS256".into(), "PS256".into()],
                ..IssuerConfig::new(ISSUER, vec![AUDIENCE.into()])
            }],
            Arc::new(portvagt::metrics::Metrics::new()),
        )
        .expect("verifier");
        let saml = AssertionPolicy {
            signers: TrustedSigner::load_pem(
                pki.sts.cert_pem.as_bytes(),
                &["TEST1-NSP-STS".into(), "http://sts.sundhedsdatastyrelsen.dk/".into()],
            )
            .expect("STS"),
            allow_sha1: true,
            audiences: vec![AUDIENCE.to_owned()],
            min_authentication_level: 3,
            leeway: 60,
            max_lifetime: 24 * 3600,
            max_bytes: 64 * 1024,
            token_endpoint: format!("{AUDIENCE}/token"),
        };
        Fixture {
            pki,
            peer,
            issuer,
            verifier,
            saml,
        }
    })
}

/// FHIR request classification. Input: method, path, query and body, split at newlines. What
/// is accepted names a real resource type and a well-formed id, classifies the same again, and
/// (with its body attached) is decided without panicking.
pub fn classify(data: &[u8]) {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    fn text(part: Option<&[u8]>) -> Option<&str> {
        part.and_then(|p| std::str::from_utf8(p).ok())
    }
    let method = text(parts.next()).unwrap_or("GET");
    let path = text(parts.next()).unwrap_or_default();
    let query = text(parts.next());
    let body = parts.next().unwrap_or_default();
    let Ok(mut request) = portvagt_policy::classify(method, path, query) else {
        return;
    };
    if let Some(id) = request.id() {
        assert!(
            (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            "accepted id {id:?} is not a FHIR id"
        );
    }
    let again = portvagt_policy::classify(method, path, query).expect("classified once, so again");
    assert_eq!(again.interaction(), request.interaction());
    if request.needs_body() && request.attach_body(Some("application/fhir+json"), body).is_err() {
        return;
    }
    let scopes = ScopeSet::parse("patient/*.cruds user/Observation.rs system/Patient.cruds");
    let opened = ["Observation".to_owned()];
    for channel in [
        portvagt_policy::Channel::Professional,
        portvagt_policy::Channel::Citizen {
            opened: &opened,
            blocks: false,
        },
        portvagt_policy::Channel::Citizen {
            opened: &opened,
            blocks: true,
        },
    ] {
        let subject = portvagt_policy::Subject {
            fhir_user: Some("Patient/pat-anne"),
            channel,
            ..portvagt_policy::Subject::new(&scopes, Some("pat-anne"))
        };
        let _ = portvagt_policy::decide(subject, &request);
    }
}

/// SMART scope parsing: never more scopes than words.
pub fn scope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scopes = ScopeSet::parse(text);
    assert!(scopes.iter().count() <= text.split_whitespace().count());
}

/// JWT header and claims. First byte 0: the rest is a token as presented (it must be refused:
/// nobody but the fixture holds the key). Else: the rest is a claims object, signed with the
/// issuer's key and verified, so the claim checks themselves are what is fuzzed; a token that
/// passes carries the `sub` it was given.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    if mode == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        assert!(
            fixture
                .verifier
                .verify_with_held_keys(token, &fixture.peer, false)
                .is_err(),
            "a token not signed by the issuer was accepted"
        );
        return;
    }
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    if !claims.is_object() {
        return;
    }
    let Ok(token) = fixture.issuer.sign(&claims) else {
        return;
    };
    if let Ok(principal) = fixture
        .verifier
        .verify_with_held_keys(&token, &fixture.peer, mode % 2 == 0)
    {
        assert_eq!(Some(principal.subject()), claims["sub"].as_str());
        assert_eq!(claims["iss"].as_str(), Some(ISSUER));
    }
}

/// SAML assertion parsing, canonicalization and signature checks: arbitrary bytes (and
/// mutations of signed cards from another STS) are never accepted.
pub fn saml(data: &[u8]) {
    let fixture = fixture();
    let now = 1_800_000_000;
    assert!(
        fixture.saml.verify(data, &fixture.peer, now).is_err(),
        "an assertion not signed by the trusted STS was accepted"
    );
}

/// Response filtering over arbitrary JSON: what the filter lets through (unchanged or
/// rewritten) passes the same check again, and the audit's patient extraction never fails.
pub fn response_filter(data: &[u8]) {
    let check = ResponseCheck {
        compartment: Some("pat-anne"),
        restriction: &[],
        instance_verified: data.first().is_some_and(|b| b & 1 == 1),
        withhold_audit_events: data.first().is_some_and(|b| b & 2 == 2),
    };
    for mode in [FilterMode::Remove, FilterMode::Deny] {
        if let Filtered::Rewritten(bytes) = check_response(data, &check, mode) {
            assert!(
                matches!(check_response(&bytes, &check, mode), Filtered::Unchanged),
                "the filtered answer does not pass the filter"
            );
        }
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = patients_in_answer(&value);
    }
}

/// Configuration parsing: any text is a configuration or an error naming a field.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = Config::parse(text) {
        assert!(!error.to_string().is_empty());
    }
}

/// FHIR XML request bodies: never a panic, an expansion or a recursion past the depth bound;
/// what is read is JSON, and a resource read from XML has an XML form again.
pub fn fhir_xml(data: &[u8]) {
    let Ok(json) = portvagt_fhir::xml_to_json(data) else {
        return;
    };
    let value: serde_json::Value = serde_json::from_slice(&json).expect("XML is read into JSON");
    assert!(value.get("resourceType").is_some(), "a resource: {value}");
    let _ = portvagt_fhir::json_to_xml(&json);
}
