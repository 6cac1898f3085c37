//! From verified claims to a [`Principal`]: the same for a JWT's payload and an introspection
//! answer (RFC 7662 §2.2), read with the issuer's claim names (`[issuer.claims]`).

use std::sync::Arc;

use portvagt_policy::ScopeSet;
use serde_json::{Map, Value};

use super::principal::{Identity, Organisation};
use super::{AuthnError, Principal};
use crate::config::ClaimNames;
use crate::tls::PeerIdentity;

/// A claim name as a path into nested objects.
#[derive(Debug, Clone)]
struct ClaimPath(Vec<String>);

impl ClaimPath {
    fn new(dotted: &str) -> ClaimPath {
        ClaimPath(dotted.split('.').map(str::to_owned).collect())
    }

    fn find<'c>(&self, claims: &'c Map<String, Value>) -> Option<&'c Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(first)?;
        for name in rest {
            value = value.as_object()?.get(name)?;
        }
        (!value.is_null()).then_some(value)
    }
}

/// One issuer's claim names, prepared.
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    scope: Vec<ClaimPath>,
    patient: ClaimPath,
    fhir_user: ClaimPath,
    roles: ClaimPath,
    purpose_of_use: ClaimPath,
    client_id: Vec<ClaimPath>,
}

/// The identity claims an audit record names; malformed ones are left out, not refused (they
/// grant nothing).
fn identity(claims: &Map<String, Value>) -> Identity {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let name = text("name").or_else(|| match (text("given_name"), text("family_name")) {
        (Some(given), Some(family)) => Some(format!("{given} {family}")),
        (given, family) => given.or(family),
    });
    let organisation = claims
        .get("care_provider")
        .and_then(Value::as_object)
        .and_then(|provider| {
            let field = |name: &str| {
                provider
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            Some(Organisation {
                kind: field("type").unwrap_or_else(|| "other".into()),
                id: field("id")?,
                name: field("name"),
            })
        });
    Identity {
        name,
        cpr: text("cpr"),
        authorization_id: text("authorization_id"),
        organisation,
        on_behalf_of: text("on_behalf_of"),
        system_name: text("system_name"),
        break_glass_reason: text("break_glass_reason"),
    }
}

/// What binds the token to the connection, and whether binding is required.
#[derive(Debug, Clone, Copy)]
pub struct BindingRule {
    /// The issuer (or the authorization scheme) requires a certificate-bound token.
    pub required: bool,
}

impl ClaimMapping {
    /// Prepares `names`. The default names also read the common alternatives (`scp`, `azp`).
    pub fn new(names: &ClaimNames) -> ClaimMapping {
        let with_fallback = |name: &str, default: &str, fallback: &str| {
            let mut paths = vec![ClaimPath::new(name)];
            if name == default {
                paths.push(ClaimPath::new(fallback));
            }
            paths
        };
        ClaimMapping {
            scope: with_fallback(&names.scope, "scope", "scp"),
            patient: ClaimPath::new(&names.patient),
            fhir_user: ClaimPath::new(&names.fhir_user),
            roles: ClaimPath::new(&names.roles),
            purpose_of_use: ClaimPath::new(&names.purpose_of_use),
            client_id: with_fallback(&names.client_id, "client_id", "azp"),
        }
    }

    /// Builds the principal from claims whose signature, issuer, audience and lifetime were
    /// already checked. `cnf` is checked here against the connection's certificate.
    pub fn principal(
        &self,
        claims: &Map<String, Value>,
        subject: String,
        issuer: String,
        expires_at: u64,
        binding: BindingRule,
        peer: &Arc<PeerIdentity>,
    ) -> Result<Principal, AuthnError> {
        let certificate_bound = check_binding(claims, binding, peer)?;
        let patient = self.string(&self.patient, claims)?;
        if let Some(patient) = &patient
            && !is_fhir_id(patient)
        {
            return Err(AuthnError::InvalidClaim);
        }
        let scopes = match self.scope.iter().find_map(|path| path.find(claims)) {
            None => ScopeSet::default(),
            Some(Value::String(text)) => ScopeSet::parse(text),
            Some(Value::Array(items)) => ScopeSet::from_tokens(
                items
                    .iter()
                    .map(|item| item.as_str().ok_or(AuthnError::InvalidClaim))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err(AuthnError::InvalidClaim),
        };
        let client_id = match self.client_id.iter().find_map(|path| path.find(claims)) {
            None => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(_) => return Err(AuthnError::InvalidClaim),
        };
        let roles = match self.roles.find(claims) {
            None => Vec::new(),
            Some(Value::String(role)) => vec![role.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(AuthnError::InvalidClaim)?,
            Some(_) => return Err(AuthnError::InvalidClaim),
        };
        Ok(Principal {
            subject,
            issuer,
            client_id,
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            scopes,
            patient,
            fhir_user: self.string(&self.fhir_user, claims)?,
            certificate_bound,
            expires_at,
            roles,
            purpose_of_use: self.string(&self.purpose_of_use, claims)?,
            audiences: match claims.get("aud") {
                Some(Value::String(aud)) => vec![aud.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            },
            identity: identity(claims),
            peer: Arc::clone(peer),
        })
    }

    fn string(
        &self,
        path: &ClaimPath,
        claims: &Map<String, Value>,
    ) -> Result<Option<String>, AuthnError> {
        match path.find(claims) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(AuthnError::InvalidClaim),
        }
    }
}

/// RFC 8705 §3: a token carrying `cnf.x5t#S256` is only good on a connection with that
/// certificate. Returns whether the token is bound.
fn check_binding(
    claims: &Map<String, Value>,
    binding: BindingRule,
    peer: &PeerIdentity,
) -> Result<bool, AuthnError> {
    match claims.get("cnf") {
        None | Some(Value::Null) if binding.required => Err(AuthnError::CertificateBindingRequired),
        None | Some(Value::Null) => Ok(false),
        Some(Value::Object(cnf)) => match cnf.get("x5t#S256") {
            // No certificate on the connection (the citizen listener): nothing to be bound to.
            Some(Value::String(_)) if !peer.has_certificate() => {
                Err(AuthnError::CertificateMismatch)
            }
            Some(Value::String(thumbprint))
                if constant_time_eq(thumbprint.as_bytes(), peer.thumbprint_sha256().as_bytes()) =>
            {
                Ok(true)
            }
            Some(Value::String(_)) => Err(AuthnError::CertificateMismatch),
            // A confirmation this gateway cannot check (DPoP `jkt`, `jwk`, ...) must not be
            // mistaken for a plain bearer token.
            _ => Err(AuthnError::UnsupportedConfirmation),
        },
        Some(_) => Err(AuthnError::InvalidClaim),
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
    use serde_json::json;

    use super::*;

    fn peer() -> Arc<PeerIdentity> {
        let pki = portvagt_certs::DevPki::generate().unwrap();
        Arc::new(PeerIdentity::from_verified_leaf(&pki.client.cert_der).unwrap())
    }

    fn build(names: &ClaimNames, claims: Value) -> Result<Principal, AuthnError> {
        ClaimMapping::new(names).principal(
            claims.as_object().unwrap(),
            "sub".into(),
            "iss".into(),
            1,
            BindingRule { required: false },
            &peer(),
        )
    }

    #[test]
    fn keycloak_style_names_are_read_from_nested_claims() {
        let names = ClaimNames {
            scope: "scp".into(),
            roles: "realm_access.roles".into(),
            patient: "ctx.patient".into(),
            fhir_user: "profile".into(),
            purpose_of_use: "pou".into(),
            client_id: "azp".into(),
        };
        let principal = build(
            &names,
            json!({
                "scp": ["user/Patient.rs", "user/Observation.rs"],
                "realm_access": { "roles": ["doctor", "nurse"] },
                "ctx": { "patient": "pat-anne" },
                "profile": "Practitioner/prac-ns363",
                "pou": "TREAT",
                "azp": "ehr",
                // The default names are not read when others are configured.
                "scope": "system/*.cruds",
                "patient": "pat-bo",
            }),
        )
        .unwrap();
        assert_eq!(principal.scopes().iter().count(), 2);
        assert_eq!(principal.roles(), ["doctor", "nurse"]);
        assert_eq!(principal.patient(), Some("pat-anne"));
        assert_eq!(principal.fhir_user(), Some("Practitioner/prac-ns363"));
        assert_eq!(principal.purpose_of_use(), Some("TREAT"));
        assert_eq!(principal.client_id(), Some("ehr"));
    }

    #[test]
    fn a_connection_without_a_certificate_matches_no_binding() {
        let none = Arc::new(PeerIdentity::without_certificate());
        let mapping = ClaimMapping::new(&ClaimNames::default());
        let principal = |claims: Value, required: bool| {
            mapping.principal(
                claims.as_object().unwrap(),
                "sub".into(),
                "iss".into(),
                1,
                BindingRule { required },
                &none,
            )
        };
        // Bound to a certificate, or to the empty thumbprint such a connection has: refused.
        for thumbprint in [peer().thumbprint_sha256().to_owned(), String::new()] {
            let bound =
                json!({ "scope": "patient/AuditEvent.rs", "cnf": { "x5t#S256": thumbprint } });
            assert!(matches!(
                principal(bound, false),
                Err(AuthnError::CertificateMismatch)
            ));
        }
        // An issuer that demands binding: refused; a plain bearer token: taken.
        let bearer = json!({ "scope": "patient/AuditEvent.rs", "patient": "pat-anne" });
        assert!(matches!(
            principal(bearer.clone(), true),
            Err(AuthnError::CertificateBindingRequired)
        ));
        let taken = principal(bearer, false).unwrap();
        assert!(!taken.certificate_bound());
        assert!(!taken.peer().is_certificate(b""));
    }

    #[test]
    fn default_names_fall_back_to_common_alternatives() {
        let principal = build(
            &ClaimNames::default(),
            json!({ "scp": ["user/Patient.rs"], "azp": "ehr", "role": "doctor" }),
        )
        .unwrap();
        assert_eq!(principal.scopes().iter().count(), 1);
        assert_eq!(principal.client_id(), Some("ehr"));
        assert_eq!(principal.roles(), ["doctor"]);
    }

    #[test]
    fn claims_of_the_wrong_type_are_refused() {
        for claims in [
            json!({ "scope": 7 }),
            json!({ "scope": ["user/Patient.rs", 7] }),
            json!({ "patient": ["pat-anne"] }),
            json!({ "patient": "Patient/pat-anne" }),
            json!({ "role": { "name": "doctor" } }),
            json!({ "fhirUser": 1 }),
            json!({ "client_id": false }),
            json!({ "cnf": "x" }),
        ] {
            assert_eq!(
                build(&ClaimNames::default(), claims.clone()).unwrap_err(),
                AuthnError::InvalidClaim,
                "{claims}"
            );
        }
    }
}
