//! Where requests go: `[backend]`, more backends by path prefix or resource type
//! (`[[upstream]]`), and per-path requirements (`[[route]]`). Only what the operator wrote, with
//! its defaults: nothing here connects to a backend (that is [`crate::runtime`]'s, at start).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

/// `[[route]]`: requirements for requests whose path starts with `path_prefix` (on a segment
/// boundary). The longest matching prefix applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// E.g. `/fhir/Patient` or `/fhir`.
    pub path_prefix: String,
    /// Refuse tokens that are not bound to the client certificate (RFC 8705).
    #[serde(default)]
    pub require_certificate_binding: bool,
}

/// `[backend]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The backend FHIR base URL, e.g. `http://fhir-backend:8080/fhir/R4`.
    pub url: String,
    /// Time to establish a backend connection.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle pooled connections kept per backend host.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle_per_host: usize,
    /// Pass the client's `Authorization` header on to the backend (off: the backend trusts the
    /// gateway, and tokens are meant for the gateway's audience).
    #[serde(default)]
    pub forward_authorization: bool,
    /// Time from sending a request until the backend's response headers (504 after).
    #[serde(default = "defaults::response_timeout", with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Extra attempts for GET and HEAD when the connection fails (never after a timeout: the
    /// backend may still be working on it).
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Consecutive failures that open the circuit (0: never).
    #[serde(default = "defaults::circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit answers 503 before one trial request.
    #[serde(default = "defaults::circuit_open", with = "humantime_serde")]
    pub circuit_open: Duration,
    /// At most this many requests in flight to this backend (503 `backend-saturated` beyond).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// CA certificates for an https backend (default: the public web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for backend mTLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Tell this backend who acted, verifiably: a short-lived JWT the gateway signs in
    /// `X-Portvagt-Identity` on every request it forwards.
    #[serde(default)]
    pub identity: Option<IdentityAssertionConfig>,
}

/// `[backend.identity]`: the verified identity assertion (README "Telling the backend who
/// acted").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityAssertionConfig {
    /// The gateway's ES256 signing key (PKCS#8 PEM), published with its `key_id` at
    /// `/.well-known/portvagt-identity-jwks.json`.
    pub signing_key: PathBuf,
    /// The key's `kid` (default: its RFC 7638 thumbprint, which changes with the key).
    #[serde(default)]
    pub key_id: Option<String>,
    /// How long an assertion is good for (at most 5 minutes).
    #[serde(default = "defaults::identity_lifetime", with = "humantime_serde")]
    pub lifetime: Duration,
    /// The assertion's `aud` (default: the backend's URL).
    #[serde(default)]
    pub audience: Option<String>,
}

/// `[[upstream]]`: another backend, for requests below its own FHIR base on the gateway
/// (`path_prefix`, e.g. `/fhir/regionh`), and/or for some resource types under a base.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A short name for logs and metric labels.
    pub name: String,
    /// The gateway path that is this backend's FHIR base (default: the main base, with
    /// `resource_types`).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only these resource types go here (default: all under `path_prefix`).
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// The backend itself.
    pub backend: BackendConfig,
}
