//! Operator configuration: one TOML file, parsed into typed structs with `deny_unknown_fields`.
//!
//! This module is what the operator SAID. [`crate::runtime::Runtime`] is what the gateway BUILT
//! from it at start (loaded keys, TLS config, clients). Validation that needs the file system
//! (certificates, keys) happens there, with errors that name the config field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing listener.
    pub server: ServerConfig,
    /// TLS for the client-facing listener.
    pub tls: TlsConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Trusted token issuers.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    /// Per-path requirements.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The backend FHIR server.
    pub backend: BackendConfig,
    /// More backends, by path prefix and/or resource type.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// The `/.well-known/smart-configuration` document.
    #[serde(default)]
    pub smart: SmartConfig,
    /// Policy enforcement choices.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `POST /token`: SOSI ID cards and OIOSAML assertions exchanged for Portvagt tokens.
    #[serde(default)]
    pub token_exchange: Option<TokenExchangeConfig>,
    /// The audit trail (IHE BALP AuditEvents in a durable spool).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Citizens' blocks (negative consent) and break-the-glass.
    #[serde(default)]
    pub consent: Option<ConsentConfig>,
    /// Per-client rate limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The citizen listener: no client certificate, citizens' own tokens, their access log.
    #[serde(default)]
    pub citizen: Option<CitizenConfig>,
}

/// `[citizen]`: a second listener for citizens' browsers, which have no client certificate.
/// TLS with the `[tls]` certificate but no client certificate requested; only tokens that are
/// not certificate-bound, from issuers that do not require binding, in a patient context about
/// the citizen themselves (`fhirUser` = `Patient/<patient>`); only reads and searches of their
/// own audit log and of the resource types listed here; the `/minlog/` page.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CitizenConfig {
    /// Address to listen on, e.g. `0.0.0.0:8444`.
    pub listen: SocketAddr,
    /// More resource types citizens may read and search here (their own, as scopes and the
    /// patient compartment allow), besides `AuditEvent`. Default: none.
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// Serve the access-log page at `/minlog/`.
    #[serde(default = "defaults::yes")]
    pub page: bool,
    /// The page's OAuth client id at the issuer (authorization code flow with PKCE, the
    /// endpoints from `[smart]`).
    #[serde(default = "defaults::citizen_client_id")]
    pub client_id: String,
    /// The scopes the page asks for.
    #[serde(default = "defaults::citizen_scope")]
    pub scope: String,
}

/// `[rate_limit]`: at most `requests` per `window` per client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window and client.
    pub requests: u64,
    /// The window (fixed, aligned to the clock).
    #[serde(default = "defaults::rate_window", with = "humantime_serde")]
    pub window: Duration,
    /// What a client is: `subject` (the token's issuer and `sub`) or `certificate`.
    #[serde(default)]
    pub key: RateLimitKey,
    /// Count across replicas in Redis (`redis://host:port/db`).
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// How clients are told apart for rate limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitKey {
    /// The token's issuer and subject.
    #[default]
    Subject,
    /// The client certificate.
    Certificate,
}

/// `[consent]`: citizens' blocks are FHIR `Consent` resources in the backend, enforced on
/// every interaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// How long a patient's loaded Consents are used before they are read again.
    #[serde(default = "defaults::consent_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How many patients' Consents are cached.
    #[serde(default = "defaults::consent_cache_entries")]
    pub cache_entries: usize,
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The spool folder (a persistent volume): append-only, hash-chained segment files.
    pub spool_dir: PathBuf,
    /// `closed` (default): a request whose audit record cannot be written is answered 503.
    /// `open`: it goes through, counted in `portvagt_audit_records_lost_total` and logged.
    #[serde(default)]
    pub failure_mode: AuditFailureMode,
    /// Segment files roll over at this size.
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
    /// This instance's name in `AuditEvent.source.observer` (default: from the host name).
    #[serde(default)]
    pub observer: Option<String>,
    /// Where the spooled events are shipped.
    #[serde(default)]
    pub ship: Option<AuditShipConfig>,
    /// Portvagt's seal key (P-256 PKCS#8 PEM): the chain is sealed with signed checkpoints, so
    /// that `portvagt audit verify --jwks` proves nothing was cut off either end. Absent: the
    /// chain is not sealed (logged as a warning at start).
    #[serde(default)]
    pub seal_key: Option<PathBuf>,
    /// The seal key's `kid`, as in the JWK Set given to `audit verify`.
    #[serde(default = "defaults::seal_key_id")]
    pub seal_key_id: String,
    /// The JWK Set of every seal key the spool's chain may hold (the key before a rotation
    /// and the current one): what the shipper's checks trust. Absent: the seal key alone.
    #[serde(default)]
    pub seal_jwks: Option<PathBuf>,
    /// A seal at least this often while the gateway runs (busy or idle).
    #[serde(default = "defaults::seal_every", with = "humantime_serde")]
    pub seal_every: Duration,
}

/// `[audit.ship]`: the audit FHIR repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditShipConfig {
    /// The repository's FHIR base URL (transaction Bundles are POSTed to it).
    pub url: String,
    /// Events per transaction.
    #[serde(default = "defaults::ship_batch_size")]
    pub batch_size: usize,
    /// CA certificates for an https repository (default: the public web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for an mTLS repository.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Segments the repository has acknowledged in full are deleted once their last record is
    /// this old (`"0s"`: as soon as they are shipped). Absent: shipped segments are kept.
    /// Unshipped records are never deleted.
    #[serde(default, with = "humantime_serde")]
    pub keep_shipped: Option<Duration>,
}

/// What happens when the audit record cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailureMode {
    /// Refuse the request (503).
    #[default]
    Closed,
    /// Let it through, loudly.
    Open,
}

/// `[token_exchange]`: SAML assertions in, short certificate-bound Portvagt JWTs out
/// (RFC 8693 and the OIO IDWS REST `saml-token=` form). Portvagt then accepts its own tokens as
/// one more issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeConfig {
    /// `iss` of the tokens Portvagt issues (an https URL naming this gateway).
    pub issuer: String,
    /// `aud` of the issued tokens; default: the issuer.
    #[serde(default)]
    pub audience: Option<String>,
    /// Portvagt's ES256 signing key, PKCS#8 PEM (published at `/.well-known/jwks.json`).
    pub signing_key: PathBuf,
    /// The key's `kid`.
    #[serde(default = "defaults::signing_key_id")]
    pub key_id: String,
    /// PEM files of the STS certificates whose signatures are trusted (and only these).
    pub trusted_sts: Vec<PathBuf>,
    /// Accept SHA-1 digests and RSA-SHA1 signatures, as legacy DGWS cards from the NSP STS
    /// still carry. Off by default.
    #[serde(default)]
    pub allow_sha1: bool,
    /// Accepted `AudienceRestriction` values; OIOSAML assertions must name one.
    #[serde(default)]
    pub assertion_audiences: Vec<String>,
    /// The lowest acceptable authentication level (DGWS 1-4; 3 = system certificate).
    #[serde(default = "defaults::min_authentication_level")]
    pub min_authentication_level: u8,
    /// Lifetime of an issued token, at most one hour; never beyond the assertion's end.
    #[serde(
        default = "defaults::exchange_token_lifetime",
        with = "humantime_serde"
    )]
    pub token_lifetime: Duration,
    /// Clock leeway for assertion validity windows.
    #[serde(default = "defaults::exchange_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// The longest validity an assertion may have left (DGWS cards: 24 h, XUA: about 8 h).
    #[serde(default = "defaults::max_assertion_lifetime", with = "humantime_serde")]
    pub max_assertion_lifetime: Duration,
    /// The largest assertion accepted, bytes (before base64).
    #[serde(default = "defaults::max_assertion_bytes")]
    pub max_assertion_bytes: usize,
    /// Scopes granted to a user card.
    #[serde(default = "defaults::user_scope")]
    pub user_scope: String,
    /// Scopes granted to a system card.
    #[serde(default = "defaults::system_scope")]
    pub system_scope: String,
    /// Scopes granted when the assertion names a patient (XUA `resource-id`): the token is
    /// then limited to that patient's compartment.
    #[serde(default = "defaults::patient_scope")]
    pub patient_scope: String,
    /// How many used assertion ids the in-memory replay cache holds.
    #[serde(default = "defaults::replay_cache_entries")]
    pub replay_cache_entries: usize,
    /// Share used assertion ids between replicas through Redis (`redis://host:port/db`).
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The FHIR base URL clients see, e.g. `https://fhir.example.dk/fhir`. Backend URLs in
    /// responses are rewritten to it. Default: `https://<listen address>/fhir`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// How long in-flight requests may run after SIGTERM/SIGINT before the gateway exits.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client has to complete the TLS handshake.
    #[serde(default = "defaults::handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How long an HTTP/1.1 client has to send a request's whole header block once it has
    /// begun (slowloris); past it the connection is closed.
    #[serde(default = "defaults::header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Plain-HTTP listener for `/healthz`, `/readyz` and `/metrics` only (for probes and
    /// scrapers that have no client certificate). Keep it on a private address.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to (PEM bundle).
    pub client_ca: PathBuf,
    /// CRLs (PEM or DER) checked for every client certificate in the chain.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request header block (HTTP/1.1 read buffer, HTTP/2 header list), bytes.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body, bytes (413 beyond it).
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: u64,
    /// Largest backend response the gateway buffers to rewrite (Bundles), bytes.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: u64,
    /// Longest a request may take end to end (504 beyond it).
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Requests processed at once; more are shed with 503.
    #[serde(default = "defaults::max_concurrent_requests")]
    pub max_concurrent_requests: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: defaults::max_header_bytes(),
            max_body_bytes: defaults::max_body_bytes(),
            max_response_bytes: defaults::max_response_bytes(),
            request_timeout: defaults::request_timeout(),
            max_concurrent_requests: defaults::max_concurrent_requests(),
        }
    }
}

/// `[[issuer]]`: one trusted OAuth authorization server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` value of its tokens.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// A JWKS file with the issuer's public keys. Exactly one of `jwks_file`, `jwks_url` and
    /// `discovery` is given.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The issuer's JWKS URL (HTTPS), fetched at start, refreshed in the background and on an
    /// unknown `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find the JWKS URL by discovery: `<issuer>/.well-known/openid-configuration`, then
    /// `<issuer>/.well-known/oauth-authorization-server` (RFC 8414).
    #[serde(default)]
    pub discovery: bool,
    /// CA certificates (PEM) that the issuer's HTTPS certificate must chain to; default: the
    /// public web PKI roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How often keys are refreshed in the background.
    #[serde(default = "defaults::jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The least time between two refreshes caused by unknown `kid`s, so a flood of made-up
    /// `kid`s cannot hammer the issuer.
    #[serde(default = "defaults::jwks_min_refresh", with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Allowed signing algorithms. Only asymmetric ones can be configured.
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<String>,
    /// Clock leeway for `exp` and `nbf`.
    #[serde(default = "defaults::leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Refuse tokens that are not bound to the client certificate (RFC 8705 `cnf.x5t#S256`).
    #[serde(default)]
    pub require_certificate_binding: bool,
    /// `[issuer.claims]`: which claims hold the scopes, patient, user, roles and purpose.
    #[serde(default)]
    pub claims: ClaimNames,
    /// `[issuer.introspection]`: opaque tokens (and this issuer's tokens when it has no key
    /// source) are checked at the issuer's RFC 7662 introspection endpoint.
    #[serde(default)]
    pub introspection: Option<IntrospectionConfig>,
}

impl IssuerConfig {
    /// An issuer with every default and no key source yet (for code that builds configs).
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> IssuerConfig {
        IssuerConfig {
            issuer: issuer.into(),
            audiences,
            jwks_file: None,
            jwks_url: None,
            discovery: false,
            ca_file: None,
            jwks_refresh: defaults::jwks_refresh(),
            jwks_min_refresh: defaults::jwks_min_refresh(),
            algorithms: defaults::algorithms(),
            leeway: defaults::leeway(),
            require_certificate_binding: false,
            claims: ClaimNames::default(),
            introspection: None,
        }
    }
}

/// `[issuer.claims]`: claim names, as dotted paths into nested objects (e.g.
/// `realm_access.roles` for Keycloak realm roles). A claim may be a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimNames {
    /// Granted scopes, space-separated or a list (the default also reads `scp` if `scope` is
    /// absent).
    #[serde(default = "defaults::claim_scope")]
    pub scope: String,
    /// The patient in context (SMART `launch/patient`): a FHIR id.
    #[serde(default = "defaults::claim_patient")]
    pub patient: String,
    /// The user's FHIR resource, e.g. `Practitioner/123`.
    #[serde(default = "defaults::claim_fhir_user")]
    pub fhir_user: String,
    /// The user's roles.
    #[serde(default = "defaults::claim_roles")]
    pub roles: String,
    /// The purpose of use (e.g. `TREAT`, `EMERGENCY`).
    #[serde(default = "defaults::claim_purpose_of_use")]
    pub purpose_of_use: String,
    /// The OAuth client (the default also reads `azp` if `client_id` is absent).
    #[serde(default = "defaults::claim_client_id")]
    pub client_id: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            scope: defaults::claim_scope(),
            patient: defaults::claim_patient(),
            fhir_user: defaults::claim_fhir_user(),
            roles: defaults::claim_roles(),
            purpose_of_use: defaults::claim_purpose_of_use(),
            client_id: defaults::claim_client_id(),
        }
    }
}

/// `[issuer.introspection]`: RFC 7662 token introspection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (HTTPS); its certificate must chain to the issuer's
    /// `ca_file`.
    pub url: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// A file holding the client secret (`client_secret_basic`).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret (`client_secret_basic`).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// The gateway's client certificate (PEM) for `tls_client_auth` (RFC 8705 §2), instead
    /// of a secret.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert` (PEM).
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// An active token's answer is cached until its `exp`, but never longer than this.
    #[serde(
        default = "defaults::introspection_cache_ceiling",
        with = "humantime_serde"
    )]
    pub cache_ceiling: Duration,
    /// How long an inactive answer is cached.
    #[serde(
        default = "defaults::introspection_negative_cache",
        with = "humantime_serde"
    )]
    pub negative_cache: Duration,
    /// The most answers held; when full, expired ones go first, then the oldest.
    #[serde(default = "defaults::introspection_cache_entries")]
    pub cache_entries: usize,
}

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

/// `[smart]`: fields of `/.well-known/smart-configuration` (SMART App Launch 2.2 §2.1).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SmartConfig {
    /// `issuer`; default: the first configured issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// `jwks_uri` of the issuer.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// `authorization_endpoint`.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// `token_endpoint`.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// `introspection_endpoint`.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// `grant_types_supported`; default `authorization_code`, `client_credentials`.
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// `scopes_supported`.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// `capabilities`.
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
}

/// `[policy]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens to search results outside a patient-context token's compartment:
    /// `remove` them (and lower `total`), or `deny` the whole answer with 403.
    #[serde(default)]
    pub filtered_entries: FilteredEntries,
    /// Operator rules (TOML, `[[rule]]` tables), evaluated after scopes, deny by default.
    /// Without it, scopes alone decide.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
}

/// See [`PolicyConfig::filtered_entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilteredEntries {
    /// Remove them.
    #[default]
    Remove,
    /// Refuse the answer.
    Deny,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `json` (one object per line) or `text`.
    #[serde(default = "defaults::log_format")]
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `portvagt=debug`. `RUST_LOG` overrides it.
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: defaults::log_format(),
            level: defaults::log_level(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// A configuration problem, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `tls.client_ca` or `issuer[0].jwks_file`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Several problems as one text, each as it displays, `separator` between them.
    pub fn join(errors: &[ConfigError], separator: &str) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(separator)
    }
}

impl Config {
    /// Reads and parses a config file. Relative paths in it are resolved against the file's
    /// folder, so a config can travel with its certificates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("(file)", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut config = Self::parse(&text)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Parses config text. Unknown fields and wrong types are errors that name the field.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            let field = match e.span() {
                Some(span) => field_at(text, span.start),
                None => "(file)".to_owned(),
            };
            ConfigError::new(field, message)
        })
    }

    /// The issuer the SMART documents describe: `[smart] issuer`, else the first issuer.
    pub fn smart_issuer(&self) -> Option<&str> {
        self.smart
            .issuer
            .as_deref()
            .or_else(|| self.issuers.first().map(|issuer| issuer.issuer.as_str()))
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        resolve(&mut self.tls.client_ca);
        self.tls.crls.iter_mut().for_each(resolve);
        for issuer in &mut self.issuers {
            if let Some(file) = &mut issuer.jwks_file {
                resolve(file);
            }
            if let Some(file) = &mut issuer.ca_file {
                resolve(file);
            }
            if let Some(introspection) = &mut issuer.introspection {
                for file in [
                    &mut introspection.client_secret_file,
                    &mut introspection.client_cert,
                    &mut introspection.client_key,
                ]
                .into_iter()
                .flatten()
                {
                    resolve(file);
                }
            }
        }
        if let Some(rules_file) = &mut self.policy.rules_file {
            resolve(rules_file);
        }
        for backend in std::iter::once(&mut self.backend).chain(
            self.upstreams
                .iter_mut()
                .map(|upstream| &mut upstream.backend),
        ) {
            for file in [
                &mut backend.ca_file,
                &mut backend.client_cert,
                &mut backend.client_key,
            ]
            .into_iter()
            .flatten()
            {
                resolve(file);
            }
        }
        if let Some(audit) = &mut self.audit {
            resolve(&mut audit.spool_dir);
            for file in [&mut audit.seal_key, &mut audit.seal_jwks]
                .into_iter()
                .flatten()
            {
                resolve(file);
            }
            if let Some(ship) = &mut audit.ship {
                for file in [
                    &mut ship.ca_file,
                    &mut ship.client_cert,
                    &mut ship.client_key,
                ]
                .into_iter()
                .flatten()
                {
                    resolve(file);
                }
            }
        }
        if let Some(exchange) = &mut self.token_exchange {
            resolve(&mut exchange.signing_key);
            exchange.trusted_sts.iter_mut().for_each(resolve);
        }
    }
}

/// Names the TOML key in effect at byte `offset`: the nearest `[table]` header above plus the
/// key on the offending line, e.g. `limits.max_body_bytes`.
fn field_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.starts_with('['));
    match (table, key) {
        (Some(table), Some(key)) => format!("{table}.{key}"),
        (Some(table), None) => table,
        (None, Some(key)) => key,
        (None, None) => "(file)".to_owned(),
    }
}

mod defaults {
    use std::time::Duration;

    use super::LogFormat;

    pub(super) fn yes() -> bool {
        true
    }
    pub(super) fn citizen_client_id() -> String {
        "minlog".into()
    }
    pub(super) fn citizen_scope() -> String {
        "openid fhirUser launch/patient patient/AuditEvent.rs".into()
    }
    pub(super) fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn handshake_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn max_header_bytes() -> usize {
        16 * 1024
    }
    pub(super) fn max_body_bytes() -> u64 {
        10 * 1024 * 1024
    }
    pub(super) fn max_response_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub(super) fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn max_concurrent_requests() -> usize {
        1024
    }
    pub(super) fn algorithms() -> Vec<String> {
        ["RS256", "PS256", "ES256", "EdDSA"]
            .map(String::from)
            .to_vec()
    }
    pub(super) fn leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn jwks_refresh() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn jwks_min_refresh() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn claim_scope() -> String {
        "scope".to_owned()
    }
    pub(super) fn claim_patient() -> String {
        "patient".to_owned()
    }
    pub(super) fn claim_fhir_user() -> String {
        "fhirUser".to_owned()
    }
    pub(super) fn claim_roles() -> String {
        "role".to_owned()
    }
    pub(super) fn claim_purpose_of_use() -> String {
        "purpose_of_use".to_owned()
    }
    pub(super) fn claim_client_id() -> String {
        "client_id".to_owned()
    }
    pub(super) fn introspection_cache_ceiling() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn introspection_negative_cache() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn introspection_cache_entries() -> usize {
        100_000
    }
    pub(super) fn max_in_flight() -> usize {
        512
    }
    pub(super) fn rate_window() -> Duration {
        Duration::from_secs(1)
    }
    pub(super) fn response_timeout() -> Duration {
        Duration::from_secs(25)
    }
    pub(super) fn retries() -> u32 {
        1
    }
    pub(super) fn circuit_failures() -> u32 {
        5
    }
    pub(super) fn circuit_open() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn consent_cache_ttl() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn consent_cache_entries() -> usize {
        100_000
    }
    pub(super) fn ship_batch_size() -> usize {
        100
    }
    pub(super) fn segment_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub(super) fn seal_key_id() -> String {
        "audit-seal-1".into()
    }
    pub(super) fn seal_every() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn signing_key_id() -> String {
        "portvagt-1".to_owned()
    }
    pub(super) fn min_authentication_level() -> u8 {
        3
    }
    pub(super) fn exchange_token_lifetime() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) fn exchange_leeway() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn max_assertion_lifetime() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub(super) fn max_assertion_bytes() -> usize {
        64 * 1024
    }
    pub(super) fn user_scope() -> String {
        "user/*.rs".to_owned()
    }
    pub(super) fn system_scope() -> String {
        "system/*.rs".to_owned()
    }
    pub(super) fn patient_scope() -> String {
        "patient/*.rs".to_owned()
    }
    pub(super) fn replay_cache_entries() -> usize {
        100_000
    }
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn pool_max_idle() -> usize {
        64
    }
    pub(super) fn log_format() -> LogFormat {
        LogFormat::Json
    }
    pub(super) fn log_level() -> String {
        "info".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[[issuer]]
issuer = "https://auth.example.dk"
audiences = ["https://fhir.example.dk/fhir"]
jwks_file = "jwks.json"

[backend]
url = "http://127.0.0.1:8080/fhir/R4"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(
            config.issuers[0].algorithms,
            ["RS256", "PS256", "ES256", "EdDSA"]
        );
        assert_eq!(config.issuers[0].leeway, Duration::from_secs(30));
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("[backend]\n", "[backend]\nurll = \"x\"\n");
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field, "backend.urll");
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn wrong_type_is_named() {
        let text = format!("{MINIMAL}\n[limits]\nmax_body_bytes = \"ten\"\n");
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field, "limits.max_body_bytes", "{error}");
    }

    #[test]
    fn bad_duration_is_named() {
        let text = format!("{MINIMAL}\n[limits]\nrequest_timeout = \"soon\"\n");
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field, "limits.request_timeout", "{error}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portvagt.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tls.cert, dir.path().join("server.crt"));
        assert_eq!(
            config.issuers[0].jwks_file,
            Some(dir.path().join("jwks.json"))
        );
    }
}
