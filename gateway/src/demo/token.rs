//! Demo tokens: what one says ([`TokenRequest`]) and minting it with the demo issuer key
//! ([`mint_token`]), for `portvagt demo` and `portvagt token`. Development only: the key is the
//! demo issuer's, which no production configuration may trust.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use super::DEMO_ISSUER;
use crate::auth::issuer_key::IssuerKey;
use crate::tls::PeerIdentity;

/// What a demo token says.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `scope`, space-separated.
    pub scope: String,
    /// `patient` launch context.
    pub patient: Option<String>,
    /// `fhirUser`.
    pub fhir_user: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// Bind to this client certificate (PEM file) with `cnf.x5t#S256`.
    pub bind_cert: Option<PathBuf>,
    /// Lifetime.
    pub ttl: Duration,
    /// More claims (an object), e.g. `name`, `role`, `authorization_id`, `purpose_of_use`.
    pub extra: serde_json::Value,
}

/// Mints a token from the demo issuer key in `issuer_dir` for `audience`.
pub fn mint_token(
    issuer_dir: &Path,
    audience: &str,
    request: &TokenRequest,
) -> anyhow::Result<String> {
    let key = IssuerKey::load(issuer_dir)?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "iss": DEMO_ISSUER,
        "aud": audience,
        "sub": request.subject,
        "iat": now,
        "nbf": now,
        "exp": now + request.ttl.as_secs(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": request.scope,
    });
    if let Some(patient) = &request.patient {
        claims["patient"] = json!(patient);
    }
    if let Some(fhir_user) = &request.fhir_user {
        claims["fhirUser"] = json!(fhir_user);
    }
    if let Some(client_id) = &request.client_id {
        claims["client_id"] = json!(client_id);
    }
    if let Some(extra) = request.extra.as_object() {
        for (name, value) in extra {
            claims[name] = value.clone();
        }
    }
    if let Some(path) = &request.bind_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let der = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?
            .1
            .contents;
        let identity =
            PeerIdentity::from_verified_leaf(&der).context("not an X.509 certificate")?;
        claims["cnf"] = json!({ "x5t#S256": identity.thumbprint_sha256() });
    }
    key.sign(&claims)
}
