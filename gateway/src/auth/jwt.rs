//! JWT access-token verification (RFC 7519, RFC 8725 best practices, RFC 8705 binding).
//!
//! Order of checks: the token must be three base64url parts; its `iss` selects ONE configured
//! issuer; the header `alg` must be on that issuer's allow-list (so `none` and HMAC never get
//! near a key); the key is chosen by `kid` among that issuer's keys and must be of the
//! algorithm's family; then signature, `exp`/`nbf` (with leeway), `aud`, and required claims;
//! last, `cnf.x5t#S256` against the client certificate.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use portvagt_policy::ScopeSet;
use serde::Deserialize;

use super::jwks::{self, KeyFamily, VerificationKey};
use super::remote_jwks::RemoteJwks;
use super::{AuthnError, Principal};
use crate::config::{ConfigError, IssuerConfig};
use crate::metrics::Metrics;
use crate::tls::PeerIdentity;

/// Verifies access tokens against every configured issuer. Built once at start.
#[derive(Debug)]
pub struct TokenVerifier {
    issuers: HashMap<String, IssuerVerifier>,
}

#[derive(Debug)]
struct IssuerVerifier {
    keys: Keys,
    /// One prepared validation per allowed algorithm.
    validations: HashMap<Algorithm, Validation>,
    require_binding: bool,
}

/// Where an issuer's keys come from.
#[derive(Debug)]
enum Keys {
    /// Loaded from a file at start.
    Fixed(Arc<Vec<VerificationKey>>),
    /// Fetched over HTTPS and refreshed.
    Remote(Arc<RemoteJwks>),
}

impl Keys {
    fn held(&self) -> Arc<Vec<VerificationKey>> {
        match self {
            Keys::Fixed(keys) => Arc::clone(keys),
            Keys::Remote(remote) => remote.keys(),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct IssuerPeek {
    #[serde(default)]
    iss: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
    #[serde(default)]
    scp: Option<Vec<String>>,
    #[serde(default)]
    patient: Option<String>,
    #[serde(default, rename = "fhirUser")]
    fhir_user: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    cnf: Option<Confirmation>,
    #[serde(default)]
    role: Option<StringOrList>,
    #[serde(default)]
    purpose_of_use: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct Confirmation {
    #[serde(default, rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

impl TokenVerifier {
    /// Loads every file-based issuer's keys, prepares remote ones (fetched by
    /// [`TokenVerifier::remote_sources`]' owners), and prepares validations.
    pub fn new(
        issuers: &[IssuerConfig],
        metrics: Arc<Metrics>,
    ) -> Result<TokenVerifier, ConfigError> {
        let mut map = HashMap::new();
        for (index, issuer) in issuers.iter().enumerate() {
            let field = |name: &str| format!("issuer[{index}].{name}");
            if issuer.audiences.is_empty() {
                return Err(ConfigError::new(
                    field("audiences"),
                    "at least one audience is required",
                ));
            }
            let mut algorithms = Vec::new();
            for name in &issuer.algorithms {
                let alg = Algorithm::from_str(name).map_err(|_| {
                    ConfigError::new(field("algorithms"), format!("unknown algorithm {name:?}"))
                })?;
                if KeyFamily::of(alg).is_none() {
                    return Err(ConfigError::new(
                        field("algorithms"),
                        format!("{name} is symmetric; only asymmetric algorithms are allowed"),
                    ));
                }
                algorithms.push(alg);
            }
            if algorithms.is_empty() {
                return Err(ConfigError::new(
                    field("algorithms"),
                    "at least one algorithm is required",
                ));
            }
            let keys = match &issuer.jwks_file {
                Some(file) if issuer.jwks_url.is_none() && !issuer.discovery => {
                    Keys::Fixed(Arc::new(
                        jwks::load_file(file)
                            .map_err(|e| ConfigError::new(field("jwks_file"), e))?,
                    ))
                }
                Some(_) => {
                    return Err(ConfigError::new(
                        field("jwks_file"),
                        "give exactly one of jwks_file, jwks_url, discovery",
                    ));
                }
                None => Keys::Remote(Arc::new(RemoteJwks::new(index, issuer, metrics.clone())?)),
            };
            let validations = algorithms
                .iter()
                .map(|&alg| {
                    let mut validation = Validation::new(alg);
                    validation.leeway = issuer.leeway.as_secs();
                    validation.validate_nbf = true;
                    validation.set_audience(&issuer.audiences);
                    validation.set_issuer(&[&issuer.issuer]);
                    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                    (alg, validation)
                })
                .collect();
            let verifier = IssuerVerifier {
                keys,
                validations,
                require_binding: issuer.require_certificate_binding,
            };
            if map.insert(issuer.issuer.clone(), verifier).is_some() {
                return Err(ConfigError::new(field("issuer"), "configured twice"));
            }
        }
        Ok(TokenVerifier { issuers: map })
    }

    /// The issuers whose keys are fetched over HTTPS, for the server to warm up and refresh.
    pub fn remote_sources(&self) -> Vec<Arc<RemoteJwks>> {
        self.issuers
            .values()
            .filter_map(|issuer| match &issuer.keys {
                Keys::Remote(remote) => Some(Arc::clone(remote)),
                Keys::Fixed(_) => None,
            })
            .collect()
    }

    /// Verifies `token` presented on a connection with client certificate `peer`. A `kid` the
    /// gateway does not hold makes a remote issuer's keys refresh (rate-limited) once.
    pub async fn verify(
        &self,
        token: &str,
        peer: &Arc<PeerIdentity>,
    ) -> Result<Principal, AuthnError> {
        match self.verify_with_held_keys(token, peer) {
            Err(AuthnError::UnknownKey) => {
                let remote = issuer_name(token)
                    .ok()
                    .and_then(|name| self.issuers.get(&name))
                    .and_then(|issuer| match &issuer.keys {
                        Keys::Remote(remote) => Some(Arc::clone(remote)),
                        Keys::Fixed(_) => None,
                    });
                match remote {
                    Some(remote) if remote.refresh_for_unknown_kid().await => {
                        self.verify_with_held_keys(token, peer)
                    }
                    _ => Err(AuthnError::UnknownKey),
                }
            }
            other => other,
        }
    }

    /// Verifies with the keys held now, never touching the network.
    pub fn verify_with_held_keys(
        &self,
        token: &str,
        peer: &Arc<PeerIdentity>,
    ) -> Result<Principal, AuthnError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthnError::Malformed);
        };
        let header: Header = decode_part(header)?;
        let issuer_name = decode_part::<IssuerPeek>(payload)?
            .iss
            .ok_or(AuthnError::MissingClaim)?;
        let issuer = self
            .issuers
            .get(&issuer_name)
            .ok_or(AuthnError::UnknownIssuer)?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthnError::AlgorithmNotAllowed)?;
        let validation = issuer
            .validations
            .get(&alg)
            .ok_or(AuthnError::AlgorithmNotAllowed)?;
        let keys = issuer.keys.held();
        let key = key_for(&keys, header.kid.as_deref(), alg)?;

        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map_err(|e| map_error(e.kind()))?
            .claims;

        let bound = match claims.cnf.as_ref().map(|cnf| cnf.x5t_s256.as_deref()) {
            // A confirmation this gateway cannot check (DPoP `jkt`, `jwk`, ...) must not be
            // mistaken for a plain bearer token.
            Some(None) => return Err(AuthnError::UnsupportedConfirmation),
            Some(Some(thumbprint))
                if constant_time_eq(thumbprint.as_bytes(), peer.thumbprint_sha256().as_bytes()) =>
            {
                true
            }
            Some(Some(_)) => return Err(AuthnError::CertificateMismatch),
            None if issuer.require_binding => return Err(AuthnError::CertificateBindingRequired),
            None => false,
        };
        if let Some(patient) = &claims.patient
            && !is_fhir_id(patient)
        {
            return Err(AuthnError::InvalidClaim);
        }
        let scopes = match &claims.scope {
            Some(ScopeClaim::Text(text)) => ScopeSet::parse(text),
            Some(ScopeClaim::List(list)) => ScopeSet::from_tokens(list.iter().map(String::as_str)),
            None => ScopeSet::from_tokens(claims.scp.iter().flatten().map(String::as_str)),
        };
        Ok(Principal {
            subject: claims.sub.ok_or(AuthnError::MissingClaim)?,
            issuer: claims.iss.ok_or(AuthnError::MissingClaim)?,
            client_id: claims.client_id.or(claims.azp),
            jti: claims.jti,
            scopes,
            patient: claims.patient,
            fhir_user: claims.fhir_user,
            certificate_bound: bound,
            expires_at: claims.exp.ok_or(AuthnError::MissingClaim)?,
            roles: match claims.role {
                None => Vec::new(),
                Some(StringOrList::One(role)) => vec![role],
                Some(StringOrList::Many(roles)) => roles,
            },
            purpose_of_use: claims.purpose_of_use,
            peer: Arc::clone(peer),
        })
    }
}

/// The token's unverified `iss`, to pick the issuer.
fn issuer_name(token: &str) -> Result<String, AuthnError> {
    let payload = token.split('.').nth(1).ok_or(AuthnError::Malformed)?;
    decode_part::<IssuerPeek>(payload)?
        .iss
        .ok_or(AuthnError::MissingClaim)
}

/// The key a token's `kid` and `alg` name, among `keys`.
fn key_for<'k>(
    keys: &'k [VerificationKey],
    kid: Option<&str>,
    alg: Algorithm,
) -> Result<&'k VerificationKey, AuthnError> {
    let family = KeyFamily::of(alg).ok_or(AuthnError::AlgorithmNotAllowed)?;
    let usable =
        |key: &&VerificationKey| key.family == family && key.alg.is_none_or(|pinned| pinned == alg);
    match kid {
        Some(kid) => keys
            .iter()
            .filter(usable)
            .find(|key| key.kid.as_deref() == Some(kid))
            .ok_or(AuthnError::UnknownKey),
        None => {
            let mut candidates = keys.iter().filter(usable);
            match (candidates.next(), candidates.next()) {
                (Some(key), None) => Ok(key),
                _ => Err(AuthnError::UnknownKey),
            }
        }
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, AuthnError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthnError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| AuthnError::Malformed)
}

fn map_error(kind: &ErrorKind) -> AuthnError {
    match kind {
        ErrorKind::InvalidSignature => AuthnError::BadSignature,
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthnError::UnknownIssuer,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject => AuthnError::MissingClaim,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthnError::AlgorithmNotAllowed,
        _ => AuthnError::Malformed,
    }
}

/// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}`; the `patient` claim must be one, or policy could
/// be asked to pin searches to an empty or odd value.
fn is_fhir_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
    use serde_json::json;

    use super::*;
    use crate::auth::dev_token::IssuerKey;

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
            issuer: ISS.into(),
            audiences: vec![AUD.into()],
            jwks_file: Some(jwks_file),
            jwks_url: None,
            discovery: false,
            ca_file: None,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
            algorithms: vec!["ES256".into(), "RS256".into()],
            leeway: Duration::from_secs(5),
            require_certificate_binding: require_binding,
        };
        let pki = portvagt_certs::DevPki::generate().unwrap();
        let peer = Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).unwrap());
        Fixture {
            verifier: TokenVerifier::new(&[config], Arc::new(crate::metrics::Metrics::new()))
                .unwrap(),
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
            .verify_with_held_keys(&sign(&f, &claims()), &f.peer)
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
                    .verify_with_held_keys(&sign(&f, &c), &f.peer)
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
                    .verify_with_held_keys(&sign(&f, &c), &f.peer)
                    .unwrap_err(),
                AuthnError::InvalidClaim,
                "{bad:?}"
            );
        }
        let mut c = claims();
        c["patient"] = json!("pat-anne");
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&sign(&f, &c), &f.peer)
                .unwrap()
                .patient(),
            Some("pat-anne")
        );
    }

    #[test]
    fn expiry_within_leeway_is_accepted() {
        let f = fixture(false);
        let mut c = claims();
        c["exp"] = json!(now() - 2);
        assert!(
            f.verifier
                .verify_with_held_keys(&sign(&f, &c), &f.peer)
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
                .verify_with_held_keys(&none, &f.peer)
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
            f.verifier.verify_with_held_keys(&hs, &f.peer).unwrap_err(),
            AuthnError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn wrong_key_tampering_and_garbage_are_refused() {
        let f = fixture(false);
        let other = IssuerKey::generate("k1").unwrap();
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&other.sign(&claims()).unwrap(), &f.peer)
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
                .verify_with_held_keys(&parts.join("."), &f.peer)
                .unwrap_err(),
            AuthnError::BadSignature
        );

        let unknown_kid = IssuerKey::generate("k2").unwrap().sign(&claims()).unwrap();
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&unknown_kid, &f.peer)
                .unwrap_err(),
            AuthnError::UnknownKey
        );

        for garbage in ["", "a.b", "a.b.c.d", "!!!.???.###", "e30.e30.e30"] {
            assert!(
                f.verifier.verify_with_held_keys(garbage, &f.peer).is_err(),
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
                .verify_with_held_keys(&sign(&f, &c), &f.peer)
                .unwrap()
                .certificate_bound()
        );
        c["cnf"] = json!({ "x5t#S256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" });
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&sign(&f, &c), &f.peer)
                .unwrap_err(),
            AuthnError::CertificateMismatch
        );

        c["cnf"] = json!({ "jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I" });
        assert_eq!(
            f.verifier
                .verify_with_held_keys(&sign(&f, &c), &f.peer)
                .unwrap_err(),
            AuthnError::UnsupportedConfirmation
        );

        let strict = fixture(true);
        assert_eq!(
            strict
                .verifier
                .verify_with_held_keys(&sign(&strict, &claims()), &strict.peer)
                .unwrap_err(),
            AuthnError::CertificateBindingRequired
        );
    }
}
