//! JWT access-token verification (RFC 7519, RFC 8725 best practices, RFC 8705 binding).
//!
//! Order of checks: the token must be three base64url parts; its `iss` selects ONE configured
//! issuer; the header `alg` must be on that issuer's allow-list (so `none` and HMAC never get
//! near a key); with `require_typ`, `typ` must be `at+jwt`; once per token, its header and
//! claims must give no member twice and name no critical extension ([`strict_parts`]); the key
//! is chosen by `kid` among that issuer's keys and must be of the algorithm's family; then
//! signature, `exp`/`nbf` (with leeway), `aud`, and required claims; last, `cnf.x5t#S256`
//! against the client certificate. A token shaped like a JWT that cannot be read as one is
//! refused, never taken for an opaque token; an issuer's JWTs that are introspected are held to
//! the same reading (members, `crit`, `typ`) before they are sent.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::{BindingRule, ClaimMapping};
use super::introspection::{ActiveToken, Introspector};
use super::jwks::{self, KeyFamily, VerificationKey};
use super::remote_jwks::RemoteJwks;
use super::verified_cache::{self, Verified, VerifiedCache};
use super::{AuthnError, Principal};
use crate::config::{ConfigError, IssuerConfig};
use crate::metrics::Metrics;
use crate::tls::PeerIdentity;

/// With several introspecting issuers, an opaque token must go to one of them by rule: all
/// but one name a `token_prefix`, and no prefix begins another (which would make the choice
/// depend on order).
fn opaque_token_choice_is_explicit(issuers: &[IssuerConfig]) -> Result<(), ConfigError> {
    let introspecting: Vec<(usize, Option<&str>)> = issuers
        .iter()
        .enumerate()
        .filter_map(|(index, issuer)| {
            let config = issuer.introspection.as_ref()?;
            Some((index, config.token_prefix.as_deref()))
        })
        .collect();
    let field = |index: usize| format!("issuer[{index}].introspection.token_prefix");
    if let Some((index, _)) = introspecting
        .iter()
        .filter(|(_, prefix)| prefix.is_none())
        .nth(1)
    {
        return Err(ConfigError::new(
            field(*index),
            "several issuers introspect opaque tokens: give all but one a token_prefix, so that \
             a token is shown only to the issuer that made it",
        ));
    }
    for (index, prefix) in &introspecting {
        for (other, other_prefix) in &introspecting {
            if let (Some(prefix), Some(other_prefix)) = (prefix, other_prefix)
                && index != other
                && other_prefix.starts_with(prefix)
            {
                return Err(ConfigError::new(
                    field(*other),
                    format!("{other_prefix:?} begins with issuer[{index}]'s prefix {prefix:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Verifies access tokens against every configured issuer. Built once at start.
#[derive(Debug)]
pub struct TokenVerifier {
    issuers: HashMap<String, IssuerVerifier>,
    /// The issuers with an introspection endpoint: an opaque token is shown to exactly one of
    /// them, chosen by its `token_prefix` ([`TokenVerifier::introspector_for`]).
    introspectors: Vec<Arc<Introspector>>,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
struct IssuerVerifier {
    /// Where JWT signing keys come from; none when the issuer's tokens are introspected.
    keys: Option<Keys>,
    /// One prepared validation per allowed algorithm.
    validations: HashMap<Algorithm, Validation>,
    require_binding: bool,
    /// Only RFC 9068 access tokens (`typ` `at+jwt`).
    require_typ: bool,
    mapping: ClaimMapping,
    introspector: Option<Arc<Introspector>>,
    /// Tokens of this issuer verified already (signature and claims).
    verified: VerifiedCache,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    leeway: u64,
}

/// Where an issuer's keys come from.
#[derive(Debug)]
enum Keys {
    /// Held in memory (Portvagt's own).
    Fixed(Arc<Vec<VerificationKey>>),
    /// Loaded from a file, at start and on reload.
    File {
        path: std::path::PathBuf,
        keys: arc_swap::ArcSwap<Vec<VerificationKey>>,
    },
    /// Fetched over HTTPS and refreshed.
    Remote(Arc<RemoteJwks>),
}

impl Keys {
    fn held(&self) -> Arc<Vec<VerificationKey>> {
        match self {
            Keys::Fixed(keys) => Arc::clone(keys),
            Keys::File { keys, .. } => keys.load_full(),
            Keys::Remote(remote) => remote.keys(),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

#[derive(Deserialize)]
struct IssuerPeek {
    #[serde(default)]
    iss: Option<String>,
}

impl TokenVerifier {
    /// Loads every file-based issuer's keys, prepares remote ones (fetched by
    /// [`TokenVerifier::remote_sources`]' owners) and introspection endpoints, and prepares
    /// validations.
    pub fn new(
        issuers: &[IssuerConfig],
        metrics: Arc<Metrics>,
    ) -> Result<TokenVerifier, ConfigError> {
        let mut map = HashMap::new();
        let mut introspectors = Vec::new();
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
            let sources = usize::from(issuer.jwks_file.is_some())
                + usize::from(issuer.jwks_url.is_some())
                + usize::from(issuer.discovery);
            let keys = match (&issuer.jwks_file, sources) {
                (_, 0) if issuer.introspection.is_some() => None,
                (Some(file), 1) => Some(Keys::File {
                    path: file.clone(),
                    keys: arc_swap::ArcSwap::from_pointee(
                        jwks::load_file(file)
                            .map_err(|e| ConfigError::new(field("jwks_file"), e))?,
                    ),
                }),
                (None, 1) => Some(Keys::Remote(Arc::new(RemoteJwks::new(
                    index,
                    issuer,
                    metrics.clone(),
                )?))),
                _ => {
                    return Err(ConfigError::new(
                        field("jwks_file"),
                        "give exactly one of jwks_file, jwks_url, discovery (or none, with \
                         [issuer.introspection])",
                    ));
                }
            };
            let introspector = issuer
                .introspection
                .as_ref()
                .map(|config| Introspector::new(index, issuer, config, metrics.clone()))
                .transpose()?
                .map(Arc::new);
            introspectors.extend(introspector.clone());
            let verifier = IssuerVerifier {
                keys,
                validations: validations(issuer, &algorithms),
                require_binding: issuer.require_certificate_binding,
                require_typ: issuer.require_typ,
                mapping: ClaimMapping::new(&issuer.claims),
                introspector,
                verified: VerifiedCache::default(),
                leeway: issuer.leeway.as_secs(),
            };
            if map.insert(issuer.issuer.clone(), verifier).is_some() {
                return Err(ConfigError::new(field("issuer"), "configured twice"));
            }
        }
        opaque_token_choice_is_explicit(issuers)?;
        Ok(TokenVerifier {
            issuers: map,
            introspectors,
            metrics,
        })
    }

    /// Adds an issuer whose keys are held in memory rather than configured: Portvagt itself,
    /// for the tokens it issues by SAML token exchange. ES256 only.
    pub fn add_held_issuer(
        &mut self,
        issuer: &IssuerConfig,
        keys: Vec<VerificationKey>,
    ) -> Result<(), ConfigError> {
        let verifier = IssuerVerifier {
            keys: Some(Keys::Fixed(Arc::new(keys))),
            validations: validations(issuer, &[Algorithm::ES256]),
            require_binding: issuer.require_certificate_binding,
            require_typ: issuer.require_typ,
            mapping: ClaimMapping::new(&issuer.claims),
            introspector: None,
            verified: VerifiedCache::default(),
            leeway: issuer.leeway.as_secs(),
        };
        if self
            .issuers
            .insert(issuer.issuer.clone(), verifier)
            .is_some()
        {
            return Err(ConfigError::new(
                "token_exchange.issuer",
                "is also configured as an [[issuer]]",
            ));
        }
        Ok(())
    }

    /// Reads every issuer's `jwks_file` again and swaps in its keys; a file that does not load
    /// keeps the keys held and is reported (the others are still swapped).
    pub fn reload_key_files(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        for (name, issuer) in &self.issuers {
            if let Some(Keys::File { path, keys }) = &issuer.keys {
                match jwks::load_file(path) {
                    Ok(loaded) => keys.store(Arc::new(loaded)),
                    Err(error) => errors.push(ConfigError::new(
                        format!("issuer {name:?} jwks_file"),
                        error,
                    )),
                }
            }
        }
        errors
    }

    /// The issuers whose keys are fetched over HTTPS, for the server to warm up and refresh.
    pub fn remote_sources(&self) -> Vec<Arc<RemoteJwks>> {
        self.issuers
            .values()
            .filter_map(|issuer| match &issuer.keys {
                Some(Keys::Remote(remote)) => Some(Arc::clone(remote)),
                _ => None,
            })
            .collect()
    }

    /// The key source of issuer `issuer`, if it is fetched over HTTPS.
    pub fn remote_source(&self, issuer: &str) -> Option<Arc<RemoteJwks>> {
        match &self.issuers.get(issuer)?.keys {
            Some(Keys::Remote(remote)) => Some(Arc::clone(remote)),
            _ => None,
        }
    }

    /// Verifies `token` presented on a connection with client certificate `peer`;
    /// `binding_required` adds the route's (or the scheme's) demand for a certificate-bound
    /// token to the issuer's. A JWT whose issuer has keys is verified by signature (a `kid`
    /// the gateway does not hold makes a remote issuer's keys refresh, rate-limited, once);
    /// anything else is introspected.
    pub async fn verify(
        &self,
        token: &str,
        peer: &Arc<PeerIdentity>,
        binding_required: bool,
    ) -> Result<Principal, AuthnError> {
        let peeked = match peek(token) {
            Ok(peeked) => peeked,
            // A JWT that cannot be read (a member given twice, no `iss`) is refused, never
            // shown to an introspection endpoint as if it were opaque.
            Err(error) if is_jws_shaped(token) => return Err(strict_error(token, error)),
            Err(_) => return self.verify_opaque(token, peer, binding_required).await,
        };
        let issuer = self
            .issuers
            .get(&peeked.issuer)
            .ok_or(AuthnError::UnknownIssuer)?;
        match (&issuer.keys, &issuer.introspector) {
            (Some(keys), _) => {
                let verified = issuer.verify_signed(
                    token,
                    &peeked.header,
                    peer,
                    binding_required,
                    &self.metrics,
                );
                match (verified, keys) {
                    (Err(AuthnError::UnknownKey), Keys::Remote(remote))
                        if remote.refresh_for_unknown_kid().await =>
                    {
                        issuer.verify_signed(
                            token,
                            &peeked.header,
                            peer,
                            binding_required,
                            &self.metrics,
                        )
                    }
                    (other, _) => other,
                }
            }
            (None, Some(introspector)) => {
                // The issuer's own JWTs, introspected: read as strictly as signed ones are.
                issuer.type_is_required(&peeked.header)?;
                strict_parts(token)?;
                let active = introspector.introspect(token, now()).await?;
                issuer.principal_from_answer(token, active, peer, binding_required)
            }
            (None, None) => Err(AuthnError::UnknownIssuer),
        }
    }

    /// An opaque token: asked of the one issuer it belongs to ([`Self::introspector_for`]),
    /// never of the others, which have no business seeing it.
    async fn verify_opaque(
        &self,
        token: &str,
        peer: &Arc<PeerIdentity>,
        binding_required: bool,
    ) -> Result<Principal, AuthnError> {
        let introspector = self.introspector_for(token).ok_or(AuthnError::Malformed)?;
        let active = introspector.introspect(token, now()).await?;
        self.issuers
            .get(introspector.issuer())
            .ok_or(AuthnError::UnknownIssuer)?
            .principal_from_answer(token, active, peer, binding_required)
    }

    /// The introspecting issuer an opaque token belongs to: the one with the longest
    /// `token_prefix` it starts with, else the one without a prefix (at most one; checked at
    /// start), else none.
    fn introspector_for(&self, token: &str) -> Option<&Arc<Introspector>> {
        self.introspectors
            .iter()
            .filter(|i| i.prefix().is_some_and(|prefix| token.starts_with(prefix)))
            .max_by_key(|i| i.prefix().map_or(0, str::len))
            .or_else(|| self.introspectors.iter().find(|i| i.prefix().is_none()))
    }

    /// Verifies a JWT with the keys held now, never touching the network.
    pub fn verify_with_held_keys(
        &self,
        token: &str,
        peer: &Arc<PeerIdentity>,
        binding_required: bool,
    ) -> Result<Principal, AuthnError> {
        let peeked = peek(token).map_err(|error| strict_error(token, error))?;
        self.issuers
            .get(&peeked.issuer)
            .ok_or(AuthnError::UnknownIssuer)?
            .verify_signed(token, &peeked.header, peer, binding_required, &self.metrics)
    }
}

impl IssuerVerifier {
    /// Verifies a JWT of this issuer, whose `header` was already read, with the keys held now.
    /// A token verified before with the same keys and not yet expired is taken from the cache;
    /// the binding to the client certificate and the claim mapping are checked every time.
    fn verify_signed(
        &self,
        token: &str,
        header: &Header,
        peer: &Arc<PeerIdentity>,
        binding_required: bool,
        metrics: &Metrics,
    ) -> Result<Principal, AuthnError> {
        let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthnError::AlgorithmNotAllowed)?;
        let validation = self
            .validations
            .get(&alg)
            .ok_or(AuthnError::AlgorithmNotAllowed)?;
        self.type_is_required(header)?;
        let keys = self.keys.as_ref().ok_or(AuthnError::UnknownKey)?.held();
        let digest = verified_cache::digest(token);
        let now = now();
        let verified = match self.verified.get(&digest, &keys, now) {
            Some(verified) => {
                metrics.jwt_cache.with_label_values(&["hit"]).inc();
                verified
            }
            None => {
                metrics.jwt_cache.with_label_values(&["miss"]).inc();
                // Once per token: a token in the cache has these exact bytes.
                strict_parts(token)?;
                let key = key_for(&keys, header.kid.as_deref(), alg)?;
                let claims =
                    jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
                        .map_err(|e| map_error(e.kind()))?
                        .claims;
                let text = |name: &str| {
                    claims
                        .get(name)
                        .and_then(Value::as_str)
                        .map(Arc::<str>::from)
                        .ok_or(AuthnError::MissingClaim)
                };
                let verified = Verified {
                    subject: text("sub")?,
                    issuer: text("iss")?,
                    expires_at: claims
                        .get("exp")
                        .and_then(Value::as_u64)
                        .ok_or(AuthnError::MissingClaim)?,
                    claims: Arc::new(claims),
                };
                let good_until = verified.expires_at.saturating_add(self.leeway);
                self.verified
                    .insert(digest, verified.clone(), &keys, good_until, now);
                verified
            }
        };
        self.mapping.principal(
            &verified.claims,
            verified.subject.to_string(),
            verified.issuer.to_string(),
            verified.expires_at,
            self.binding(binding_required),
            peer,
        )
    }

    /// With `require_typ`: the header says RFC 9068 access token.
    fn type_is_required(&self, header: &Header) -> Result<(), AuthnError> {
        if self.require_typ && !is_access_token_type(header.typ.as_deref()) {
            return Err(AuthnError::WrongTokenType);
        }
        Ok(())
    }

    /// The issuer's demand for binding, plus the request's.
    fn binding(&self, binding_required: bool) -> BindingRule {
        BindingRule {
            required: self.require_binding || binding_required,
        }
    }

    /// The principal of an active introspection answer for this issuer.
    /// The token is named (in the audit trail) by its last 32 characters, whatever `jti` the
    /// answer has: some servers' opaque tokens ARE their `jti`, and a record must never hold
    /// a usable token. 32 characters find it in the server's records and are useless alone.
    fn principal_from_answer(
        &self,
        token: &str,
        active: ActiveToken,
        peer: &Arc<PeerIdentity>,
        binding_required: bool,
    ) -> Result<Principal, AuthnError> {
        let issuer_name = active
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthnError::MissingClaim)?
            .to_owned();
        let mut principal = self.mapping.principal(
            &active.claims,
            active.subject,
            issuer_name,
            active.expires_at,
            self.binding(binding_required),
            peer,
        )?;
        let tail = token
            .char_indices()
            .rev()
            .nth(31)
            .map_or(token, |(index, _)| &token[index..]);
        principal.jti = Some(tail.to_owned());
        Ok(principal)
    }
}

/// A JWT's unverified header and `iss`, read once per token to pick the issuer.
struct Peeked {
    header: Header,
    issuer: String,
}

/// Reads a token shaped like a JWT (three parts, a JOSE header with `alg`, an `iss`); an
/// error means it is not one (for [`TokenVerifier::verify`]: an opaque token).
/// One prepared validation per allowed algorithm: `iss`, `aud`, `exp`, `nbf` (with leeway)
/// and the required claims.
fn validations(issuer: &IssuerConfig, algorithms: &[Algorithm]) -> HashMap<Algorithm, Validation> {
    algorithms
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
        .collect()
}

fn peek(token: &str) -> Result<Peeked, AuthnError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthnError::Malformed);
    };
    Ok(Peeked {
        header: decode_part(header)?,
        issuer: decode_part::<IssuerPeek>(payload)?
            .iss
            .ok_or(AuthnError::MissingClaim)?,
    })
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
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

/// Whether a JOSE `typ` says RFC 9068 access token: `at+jwt`, or the full media type
/// `application/at+jwt` (RFC 7515 §4.1.9: compared without regard to case).
fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|typ| {
        typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
    })
}

/// Whether `token` is shaped like a JWS: three parts, the first a base64url JSON object.
fn is_jws_shaped(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .is_ok_and(|bytes| bytes.trim_ascii_start().starts_with(b"{"))
}

/// Why a JWT that could not be read is refused: what [`strict_parts`] finds (a member given
/// twice, a critical extension), else `error`.
fn strict_error(token: &str, error: AuthnError) -> AuthnError {
    match strict_parts(token) {
        Err(strict @ (AuthnError::DuplicateMember | AuthnError::CriticalHeader)) => strict,
        _ => error,
    }
}

/// A JWT's header and claims read strictly, before its signature is checked: no object in
/// either gives a member name twice (RFC 7519 §4 and RFC 7515 §4 let a recipient refuse them
/// or keep the last; an issuer whose library kept the first meant something else, as in
/// `"cnf": {…}, "cnf": null`), and the header names no critical extension (`crit`, RFC 7515
/// §4.1.11: one the recipient does not understand must be refused, and the gateway
/// understands none).
fn strict_parts(token: &str) -> Result<(), AuthnError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims)) = (parts.next(), parts.next()) else {
        return Err(AuthnError::Malformed);
    };
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthnError::Malformed)
    };
    let (header, claims) = (decode(header)?, decode(claims)?);
    for part in [&header, &claims] {
        match crate::strict_json::unique_members(part) {
            Ok(()) => {}
            Err(crate::strict_json::StrictJsonError::Duplicate(_)) => {
                return Err(AuthnError::DuplicateMember);
            }
            Err(crate::strict_json::StrictJsonError::Syntax(_)) => {
                return Err(AuthnError::Malformed);
            }
        }
    }
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| AuthnError::Malformed)?;
    if header.contains_key("crit") {
        return Err(AuthnError::CriticalHeader);
    }
    Ok(())
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

#[cfg(test)]
mod tests;
