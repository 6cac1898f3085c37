//! Who may call with which token: `[[issuer]]` with its claim names and introspection,
//! `[token_exchange]` (SAML assertions for Portvagt tokens) and `[smart]` (what the SMART
//! configuration says). Only what the operator wrote, with its defaults: nothing here reads a
//! key or reaches an issuer (that is [`crate::runtime`]'s, at start).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

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
    /// The STS certificates whose signatures are trusted (and only these), each pinned to the
    /// `Issuer` names it may sign for.
    pub trusted_sts: Vec<TrustedSts>,
    /// The public URL of this gateway's `POST /token`: an assertion whose
    /// `SubjectConfirmationData` names a `Recipient` must name this one. Default:
    /// `<issuer>/token`.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// Compare a `SubjectConfirmationData` `Address` with the connection's address. Turn off
    /// only where a TCP proxy in front hides the client's address.
    #[serde(default = "defaults::yes")]
    pub check_confirmation_address: bool,
    /// Accept `min_authentication_level` 1 or 2: SOSI cards that are not holder-of-key
    /// (bearer cards, which whoever holds them can present). Off: such a setting is refused.
    #[serde(default)]
    pub allow_bearer_assertions: bool,
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

/// One `trusted_sts` entry: `{ certificate = "sts.pem", issuers = ["TEST1-NSP-STS"] }`. A bare
/// path (the form before issuers were pinned) is read so that it can be refused with a clear
/// message.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TrustedSts {
    /// A certificate file and the `Issuer` values its signatures may carry.
    Pinned(PinnedSts),
    /// A bare path: refused at start, it names no issuers.
    Unpinned(PathBuf),
}

/// A trusted STS certificate (PEM, every certificate in the file) pinned to issuer names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedSts {
    pub certificate: PathBuf,
    /// The exact `saml:Issuer` values an assertion signed by this certificate may carry; none
    /// is refused at start.
    #[serde(default)]
    pub issuers: Vec<String>,
}

impl TrustedSts {
    /// The certificate file.
    pub fn path_mut(&mut self) -> &mut PathBuf {
        match self {
            TrustedSts::Pinned(pinned) => &mut pinned.certificate,
            TrustedSts::Unpinned(path) => path,
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
    /// Refuse JWTs whose header does not say they are access tokens: `typ` `at+jwt` (RFC 9068
    /// §4, `application/at+jwt` too), so that an ID token or another JWT of the same issuer
    /// and audience is not taken as one. Off by default: many issuers still send `JWT`.
    #[serde(default)]
    pub require_typ: bool,
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
            require_typ: false,
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
    /// How this issuer's opaque tokens begin. An opaque token is shown to one issuer only: the
    /// one whose prefix it starts with (the longest, if several), else the one introspecting
    /// issuer without a prefix. With several introspecting issuers, all but one need a prefix.
    #[serde(default)]
    pub token_prefix: Option<String>,
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
