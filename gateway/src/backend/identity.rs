//! The verified identity assertion: who acted, told to a backend in a way it can check. A
//! backend records the actor of a write (its Provenance, its own audit) from what the gateway
//! verified, never from headers a client could send (those are stripped:
//! `proxy/headers.rs` drops every `x-portvagt-*` header a client sends).
//!
//! Per backend, opt-in (`[backend.identity]`): every request forwarded to it carries
//! `X-Portvagt-Identity`, a JWT (RFC 7519) signed ES256 with the gateway's own key, `typ`
//! `portvagt-identity+jwt`, short-lived (60 s by default) and unique (`jti`), for the backend's
//! audience only, and for the one request it travels with (`htm`, `htu`: its method and path
//! with query, as DPoP binds a proof, RFC 9449 §4.2). The key is published at
//! `/.well-known/portvagt-identity-jwks.json`; the backend verifies the signature, `iss`, `aud`,
//! the lifetime, the request, and refuses a `jti` twice.
//!
//! The proxy says who acts ([`ActorClaims`], on the request); the backend client signs per
//! attempt ([`IdentityAsserter::assert`]), so a retried GET carries a fresh assertion.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use serde_json::{Map, Value, json};

use crate::config::{ConfigError, IdentityAssertionConfig};
use crate::issuer_key::IssuerKey;

/// The header the assertion travels in.
pub const IDENTITY_HEADER: &str = "x-portvagt-identity";

/// The assertion's JOSE `typ`.
pub const IDENTITY_TYPE: &str = "portvagt-identity+jwt";

/// The body a request forwards, when the gateway read it whole (writes, bundles, POST
/// operations and searches): an identity assertion binds it by its SHA-256 (`body_sha256`).
/// Cheap to carry (shared bytes); hashed only for a backend that takes assertions.
#[derive(Debug, Clone)]
pub struct ForwardedBody(pub bytes::Bytes);

impl ForwardedBody {
    /// Base64url (unpadded) SHA-256 of the body.
    pub fn sha256(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0);
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            digest.as_ref(),
        )
    }
}

/// The longest lifetime an operator may give assertions.
const MAX_LIFETIME: Duration = Duration::from_secs(300);

/// Signs identity assertions for one backend.
#[derive(Debug)]
pub struct IdentityAsserter {
    key: IssuerKey,
    audience: String,
    lifetime: Duration,
}

/// Who acts on a request, as claims (without the per-attempt ones), with the `iss` to sign
/// them under: put on the request for the backend client.
#[derive(Debug, Clone)]
pub struct ActorClaims {
    issuer: Arc<str>,
    claims: Map<String, Value>,
}

/// Who acted, as the gateway verified it; each part is left out of the assertion when unknown.
#[derive(Debug, Default, Clone)]
pub struct Actor<'a> {
    /// The token's `sub`.
    pub subject: &'a str,
    /// The token's issuer.
    pub token_issuer: &'a str,
    /// The person's name.
    pub name: Option<&'a str>,
    /// Profession codes (Autorisationsregister roles).
    pub roles: &'a [String],
    /// The Autorisationsregister id.
    pub authorization_id: Option<&'a str>,
    /// The organisation acted for: identifier system, value, name.
    pub organisation: Option<(&'a str, &'a str, Option<&'a str>)>,
    /// CVR of the client certificate's organisation.
    pub certificate_cvr: Option<&'a str>,
    /// The OAuth client.
    pub client_id: Option<&'a str>,
    /// SHA-256 thumbprint of the client certificate (RFC 8705 `x5t#S256`).
    pub certificate_thumbprint: Option<&'a str>,
    /// `purpose_of_use`.
    pub purpose_of_use: Option<&'a str>,
    /// The patient launch context.
    pub patient: Option<&'a str>,
    /// `fhirUser`.
    pub fhir_user: Option<&'a str>,
    /// Whom a secretary acts for.
    pub on_behalf_of: Option<&'a str>,
    /// The forwarded body's SHA-256 (base64url), when the request has one.
    pub body_sha256: Option<&'a str>,
    /// Why a consent block was set aside, for an emergency access.
    pub break_glass_reason: Option<&'a str>,
    /// The gateway's request id.
    pub request_id: Option<&'a str>,
}

impl IdentityAsserter {
    /// Loads the key; `field` names the config table in errors; `backend_url` is the default
    /// audience.
    pub fn new(
        config: &IdentityAssertionConfig,
        field: &str,
        backend_url: &str,
    ) -> Result<IdentityAsserter, ConfigError> {
        let at = |key: &str| format!("{field}.identity.{key}");
        let pem = std::fs::read_to_string(&config.signing_key).map_err(|e| {
            ConfigError::new(
                at("signing_key"),
                format!("{}: {e}", config.signing_key.display()),
            )
        })?;
        let read = |kid: &str| {
            IssuerKey::from_pem(kid, &pem).map_err(|e| {
                ConfigError::new(
                    at("signing_key"),
                    format!(
                        "{}: not a P-256 key (PKCS#8 PEM): {e:#}",
                        config.signing_key.display()
                    ),
                )
            })
        };
        let key = match &config.key_id {
            Some(kid) if kid.trim().is_empty() => {
                return Err(ConfigError::new(at("key_id"), "must not be empty"));
            }
            Some(kid) => read(kid)?,
            None => read(&read("")?.thumbprint())?,
        };
        if config.lifetime.is_zero() || config.lifetime > MAX_LIFETIME {
            return Err(ConfigError::new(
                at("lifetime"),
                "between 1s and 5m: an assertion is for one request",
            ));
        }
        Ok(IdentityAsserter {
            key,
            audience: config
                .audience
                .clone()
                .unwrap_or_else(|| backend_url.to_owned()),
            lifetime: config.lifetime,
        })
    }

    /// The public key, for the published JWK Set.
    pub fn jwk(&self) -> Value {
        self.key.jwk()
    }

    /// The claims of an assertion that the actor of `actor` makes the request `method`
    /// `target` (path and query) now.
    pub fn claims(&self, actor: &ActorClaims, method: &str, target: &str) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(&*actor.issuer));
        claims.insert("aud".into(), json!(self.audience));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + self.lifetime.as_secs()));
        claims.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
        claims.insert("htm".into(), json!(method));
        claims.insert("htu".into(), json!(target));
        for (name, value) in &actor.claims {
            claims.insert(name.clone(), value.clone());
        }
        Value::Object(claims)
    }

    /// The header value: the signed assertion for one attempt of the request `method`
    /// `target`.
    pub fn assert(
        &self,
        actor: &ActorClaims,
        method: &str,
        target: &str,
    ) -> Result<HeaderValue, String> {
        let token = self
            .key
            .sign_typed(&self.claims(actor, method, target), IDENTITY_TYPE)
            .map_err(|e| format!("signing the identity assertion: {e:#}"))?;
        HeaderValue::try_from(token).map_err(|e| e.to_string())
    }
}

impl ActorClaims {
    /// What is known of `actor`, to be signed under `issuer` (the gateway's public base URL).
    pub fn new(issuer: Arc<str>, actor: &Actor<'_>) -> ActorClaims {
        let mut claims = Map::new();
        let mut put = |name: &str, value: Value| {
            if !value.is_null() {
                claims.insert(name.to_owned(), value);
            }
        };
        put("sub", json!(actor.subject));
        put("token_issuer", json!(actor.token_issuer));
        put("name", json!(actor.name));
        if !actor.roles.is_empty() {
            put("roles", json!(actor.roles));
        }
        put("authorization_id", json!(actor.authorization_id));
        if let Some((system, value, name)) = actor.organisation {
            put(
                "organisation",
                json!({ "system": system, "value": value, "name": name }),
            );
        }
        put("certificate_cvr", json!(actor.certificate_cvr));
        put("client_id", json!(actor.client_id));
        // Not `cnf` (RFC 7800 binds the presenter, here the gateway): the client's certificate.
        put("client_x5t#S256", json!(actor.certificate_thumbprint));
        put("purpose_of_use", json!(actor.purpose_of_use));
        put("patient", json!(actor.patient));
        put("fhirUser", json!(actor.fhir_user));
        put("on_behalf_of", json!(actor.on_behalf_of));
        put("body_sha256", json!(actor.body_sha256));
        put("break_glass_reason", json!(actor.break_glass_reason));
        put("request_id", json!(actor.request_id));
        ActorClaims { issuer, claims }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asserter(
        dir: &std::path::Path,
        lifetime: Duration,
    ) -> Result<IdentityAsserter, ConfigError> {
        let key = IssuerKey::generate("id-1").unwrap();
        std::fs::write(dir.join("identity.key"), key.pem()).unwrap();
        IdentityAsserter::new(
            &IdentityAssertionConfig {
                signing_key: dir.join("identity.key"),
                key_id: Some("id-1".into()),
                lifetime,
                audience: None,
            },
            "backend",
            "https://fhir.internal/fhir/R4",
        )
    }

    #[test]
    fn an_assertion_names_what_is_known_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let asserter = asserter(dir.path(), Duration::from_secs(60)).unwrap();
        let roles = vec!["7170".to_owned()];
        let actor = Actor {
            subject: "mette.kjaer",
            token_issuer: "https://issuer.example",
            name: Some("Mette Kjær"),
            roles: &roles,
            authorization_id: Some("NS363"),
            organisation: Some(("urn:oid:1.2.208.176.1.1", "123451000016004", None)),
            client_id: Some("journal"),
            purpose_of_use: Some("EMERGENCY"),
            break_glass_reason: Some("bevidstløs"),
            request_id: Some("req-1"),
            ..Actor::default()
        };
        let actor = ActorClaims::new(Arc::from("https://gw.example/fhir"), &actor);
        let claims = asserter.claims(&actor, "POST", "/fhir/R4/Observation");
        assert_eq!(claims["aud"], "https://fhir.internal/fhir/R4");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "/fhir/R4/Observation");
        assert_eq!(claims["iss"], "https://gw.example/fhir");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert_eq!(claims["roles"], json!(["7170"]));
        assert_eq!(claims["organisation"]["value"], "123451000016004");
        assert_eq!(claims["break_glass_reason"], "bevidstløs");
        for absent in ["patient", "fhirUser", "client_x5t#S256", "certificate_cvr"] {
            assert!(claims.get(absent).is_none(), "{absent}: {claims}");
        }
        let other = asserter.claims(&actor, "POST", "/fhir/R4/Observation");
        assert_ne!(claims["jti"], other["jti"], "each assertion is unique");
        let token = asserter
            .assert(&actor, "POST", "/fhir/R4/Observation")
            .unwrap();
        let header = token
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .to_owned();
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["typ"], IDENTITY_TYPE);
        assert_eq!(header["kid"], "id-1");
        assert_eq!(header["alg"], "ES256");
    }

    #[test]
    fn the_default_kid_is_the_keys_thumbprint() {
        let dir = tempfile::tempdir().unwrap();
        let key = IssuerKey::generate("ignored").unwrap();
        std::fs::write(dir.path().join("identity.key"), key.pem()).unwrap();
        let asserter = IdentityAsserter::new(
            &IdentityAssertionConfig {
                signing_key: dir.path().join("identity.key"),
                key_id: None,
                lifetime: Duration::from_secs(60),
                audience: None,
            },
            "backend",
            "https://x",
        )
        .unwrap();
        assert_eq!(asserter.jwk()["kid"], key.thumbprint());
        assert_eq!(key.thumbprint().len(), 43, "base64url of 32 bytes");
        assert_ne!(
            key.thumbprint(),
            IssuerKey::generate("ignored").unwrap().thumbprint()
        );
    }

    #[test]
    fn a_long_lifetime_or_a_missing_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = asserter(dir.path(), Duration::from_secs(3600)).unwrap_err();
        assert_eq!(error.field, "backend.identity.lifetime");
        let error = IdentityAsserter::new(
            &IdentityAssertionConfig {
                signing_key: dir.path().join("missing.key"),
                key_id: None,
                lifetime: Duration::from_secs(60),
                audience: None,
            },
            "upstream[0].backend",
            "https://x",
        )
        .unwrap_err();
        assert_eq!(error.field, "upstream[0].backend.identity.signing_key");
    }
}
