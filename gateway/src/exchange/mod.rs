//! `POST /token`: a SAML assertion (SOSI ID card, OIOSAML / IDWS XUA) in, a short
//! certificate-bound Portvagt access token out. This is how DGWS systems move to REST without
//! new identity infrastructure.
//!
//! Two request forms, both over the mTLS listener:
//! - [RFC 8693] token exchange: `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
//!   `subject_token=<base64url assertion>`, `subject_token_type=...:saml2`;
//! - OIO IDWS REST: `saml-token=<base64 assertion>`.
//!
//! The assertion is verified ([`crate::auth::saml`]), accepted once ([`crate::auth::saml::replay`]), and
//! turned into an ES256 JWT signed with Portvagt's key: `exp` at most the configured lifetime
//! (≤ 1 h) and never after the assertion's end, `cnf.x5t#S256` = the client certificate
//! ([RFC 8705]), claims mapped from the assertion as `dk-security` tabulates them. Errors are
//! [RFC 6749 §5.2] JSON, with a stable Portvagt code first in `error_description`.
//!
//! The request's form is read in `request` and the answers are shaped in `answer`; this file
//! decides. It issues no token without the client certificate to bind it to.
//!
//! [RFC 8693]: https://www.rfc-editor.org/rfc/rfc8693
//! [RFC 8705]: https://www.rfc-editor.org/rfc/rfc8705
//! [RFC 6749 §5.2]: https://www.rfc-editor.org/rfc/rfc6749#section-5.2

mod answer;
mod request;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use portvagt_policy::ScopeSet;
use serde_json::{Map, Value, json};

use self::answer::{TokenError, error_response, json_response};
use self::request::{ACCESS_TOKEN, ExchangeRequest, decode_assertion};
use crate::auth::claims::{BindingRule, ClaimMapping};
use crate::auth::issuer_key::IssuerKey;
use crate::auth::jwks::{self, VerificationKey};
use crate::auth::saml::replay::{MemoryReplayCache, ReplayError, ReplayStore};
use crate::auth::saml::{AssertionPolicy, SamlError, TrustedSigner, VerifiedAssertion};
use crate::backend::Backend;
use crate::body::{Body, BoxError};
use crate::config::{ClaimNames, ConfigError, IssuerConfig, TokenExchangeConfig, TrustedSts};
use crate::context::{ClientAddr, RequestRecord};
use crate::metrics::Metrics;
use crate::redis::RedisClient;
use crate::tls::PeerIdentity;

const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";

/// The token endpoint. Built once at start from `[token_exchange]`.
#[derive(Debug)]
pub struct TokenExchange {
    policy: AssertionPolicy,
    replay: ReplayStore,
    /// Compare a subject confirmation's `Address` with the connection's.
    check_address: bool,
    key: IssuerKey,
    jwks: Bytes,
    issuer: String,
    audience: String,
    lifetime: u64,
    leeway: u64,
    max_request_bytes: usize,
    user_scope: String,
    system_scope: String,
    patient_scope: String,
    backend: Arc<Backend>,
    metrics: Arc<Metrics>,
    /// How Portvagt's own tokens are read (for the audit record of an exchange).
    own_claims: ClaimMapping,
}

impl TokenExchange {
    /// Loads the signing key and trusted STS certificates; errors name the config field.
    pub fn new(
        config: &TokenExchangeConfig,
        backend: Arc<Backend>,
        metrics: Arc<Metrics>,
        redis: &crate::redis::RedisSettings,
    ) -> Result<TokenExchange, ConfigError> {
        let field = |name: &str| format!("token_exchange.{name}");
        if !config.issuer.starts_with("https://") {
            return Err(ConfigError::new(field("issuer"), "must be an https:// URL"));
        }
        if config.token_lifetime.as_secs() == 0 || config.token_lifetime.as_secs() > 3600 {
            return Err(ConfigError::new(
                field("token_lifetime"),
                "must be between 1 second and 1 hour",
            ));
        }
        if !(1..=4).contains(&config.min_authentication_level) {
            return Err(ConfigError::new(
                field("min_authentication_level"),
                "must be 1, 2, 3 or 4",
            ));
        }
        // Levels 1 and 2 are bearer cards: no certificate binds them to whoever presents them.
        if config.min_authentication_level < 3 && !config.allow_bearer_assertions {
            return Err(ConfigError::new(
                field("min_authentication_level"),
                "below 3 accepts SOSI cards that are not holder-of-key (bearer cards); set \
                 allow_bearer_assertions = true to mean it",
            ));
        }
        let pem = std::fs::read_to_string(&config.signing_key).map_err(|e| {
            ConfigError::new(
                field("signing_key"),
                format!("{}: {e}", config.signing_key.display()),
            )
        })?;
        let key = IssuerKey::from_pem(&config.key_id, &pem).map_err(|e| {
            ConfigError::new(field("signing_key"), format!("not a P-256 PKCS#8 key: {e}"))
        })?;
        if config.trusted_sts.is_empty() {
            return Err(ConfigError::new(
                field("trusted_sts"),
                "at least one STS certificate is required",
            ));
        }
        let mut signers = Vec::new();
        for sts in &config.trusted_sts {
            let pinned = match sts {
                TrustedSts::Pinned(pinned) => pinned,
                TrustedSts::Unpinned(path) => {
                    return Err(ConfigError::new(
                        field("trusted_sts"),
                        format!(
                            "{}: pin the certificate to the Issuer names it may sign for: \
                             {{ certificate = \"{}\", issuers = [\"...\"] }}",
                            path.display(),
                            path.display()
                        ),
                    ));
                }
            };
            let path = &pinned.certificate;
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(field("trusted_sts"), format!("{}: {e}", path.display()))
            })?;
            signers.extend(TrustedSigner::load_pem(&pem, &pinned.issuers).map_err(|e| {
                ConfigError::new(field("trusted_sts"), format!("{}: {e}", path.display()))
            })?);
        }
        // A signature says which key made it, not which certificate (`KeyInfo` is unsigned):
        // certificates sharing a key must be pinned alike, or the presenter picks the pins.
        for (index, signer) in signers.iter().enumerate() {
            if signers[..index].iter().any(|earlier| {
                earlier.fingerprint() == signer.fingerprint()
                    && earlier.issuers() != signer.issuers()
            }) {
                return Err(ConfigError::new(
                    field("trusted_sts"),
                    format!(
                        "{}: the same key is in another entry pinned to other issuers; pin \
                         certificates that share a key to the same issuers",
                        signer.subject()
                    ),
                ));
            }
        }
        let token_endpoint = config
            .token_endpoint
            .clone()
            .unwrap_or_else(|| format!("{}/token", config.issuer.trim_end_matches('/')));
        if !token_endpoint.starts_with("https://") {
            return Err(ConfigError::new(
                field("token_endpoint"),
                "must be an https:// URL",
            ));
        }
        for (name, scope) in [
            ("user_scope", &config.user_scope),
            ("system_scope", &config.system_scope),
            ("patient_scope", &config.patient_scope),
        ] {
            if ScopeSet::parse(scope).is_empty() {
                return Err(ConfigError::new(field(name), "grants no resource scope"));
            }
        }
        let replay = match &config.redis_url {
            None => ReplayStore::Memory(MemoryReplayCache::new(config.replay_cache_entries)),
            Some(url) => ReplayStore::Redis(
                RedisClient::from_url(url, std::time::Duration::from_secs(2), redis)
                    .map_err(|e| ConfigError::new(field("redis_url"), e))?,
            ),
        };
        Ok(TokenExchange {
            policy: AssertionPolicy {
                signers,
                allow_sha1: config.allow_sha1,
                audiences: config.assertion_audiences.clone(),
                min_authentication_level: config.min_authentication_level,
                leeway: config.leeway.as_secs(),
                max_lifetime: config.max_assertion_lifetime.as_secs(),
                max_bytes: config.max_assertion_bytes,
                token_endpoint,
            },
            check_address: config.check_confirmation_address,
            // base64 (4/3) of the assertion, percent-encoded at worst (3x), and the other fields.
            max_request_bytes: config
                .max_assertion_bytes
                .saturating_mul(4)
                .saturating_add(4096),
            replay,
            jwks: Bytes::from(key.jwks()),
            key,
            audience: config
                .audience
                .clone()
                .unwrap_or_else(|| config.issuer.clone()),
            issuer: config.issuer.clone(),
            lifetime: config.token_lifetime.as_secs(),
            leeway: config.leeway.as_secs(),
            user_scope: config.user_scope.clone(),
            system_scope: config.system_scope.clone(),
            patient_scope: config.patient_scope.clone(),
            backend,
            metrics,
            own_claims: ClaimMapping::new(&ClaimNames::default()),
        })
    }

    /// How the token verifier must see Portvagt's own tokens: this issuer and audience, ES256
    /// with this key, always certificate-bound.
    pub fn own_issuer(&self) -> (IssuerConfig, Vec<VerificationKey>) {
        let mut issuer = IssuerConfig::new(self.issuer.clone(), vec![self.audience.clone()]);
        issuer.require_certificate_binding = true;
        // Portvagt's own are RFC 9068 access tokens.
        issuer.require_typ = true;
        issuer.algorithms = vec!["ES256".into()];
        let keys = jwks::parse(&self.key.jwks()).expect("the key's own JWKS parses");
        (issuer, keys)
    }

    /// The public JWK Set (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// Answers one `POST /token`. Only a body read error (e.g. too large, answered 413 by
    /// rescue) is an `Err`; every refusal is an RFC 6749 answer.
    pub async fn handle(&self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        if request.method() != Method::POST {
            let mut response = error_response(
                &TokenError::new("invalid_request", "method-not-allowed", "use POST")
                    .status(StatusCode::METHOD_NOT_ALLOWED),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Ok(response);
        }
        let peer = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        let client = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
        let record = request.extensions().get::<RequestRecord>().cloned();
        let form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let body = match http_body_util::Limited::new(request.into_body(), self.max_request_bytes)
            .collect()
            .await
        {
            Ok(body) => body.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                let error = TokenError::new(
                    "invalid_request",
                    "request-too-large",
                    "the request is larger than an assertion of the accepted size needs",
                )
                .status(StatusCode::PAYLOAD_TOO_LARGE);
                self.metrics
                    .token_exchanges
                    .with_label_values(&[error.code])
                    .inc();
                return Ok(error_response(&error));
            }
            Err(error) => return Err(error),
        };
        let outcome = match peer {
            None => Err(TokenError::new(
                "invalid_client",
                "no-client-certificate",
                "token exchange needs the client certificate the assertion is bound to",
            )
            .status(StatusCode::UNAUTHORIZED)),
            Some(_) if !form => Err(TokenError::new(
                "invalid_request",
                "not-a-form",
                "send application/x-www-form-urlencoded",
            )),
            Some(peer) => self
                .exchange(&body, &peer, client)
                .await
                .map(|(answer, claims)| {
                    // The audit record names who the token was issued to.
                    if let Some(record) = &record {
                        let caller = self.own_claims.principal(
                            &claims,
                            claims
                                .get("sub")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            self.issuer.clone(),
                            claims
                                .get("exp")
                                .and_then(Value::as_u64)
                                .unwrap_or_default(),
                            BindingRule { required: true },
                            &peer,
                        );
                        let mut fields = record.fields();
                        fields.caller = caller.ok().map(Arc::new);
                        if let Some(patient) = claims.get("patient").and_then(Value::as_str) {
                            fields.patients = vec![patient.to_owned()];
                        }
                    }
                    answer
                }),
        };
        if let (Err(error), Some(record)) = (&outcome, &record) {
            record.fields().reason = Some(error.code);
        }
        let label = match &outcome {
            Ok(_) => "issued",
            Err(error) => error.code,
        };
        self.metrics
            .token_exchanges
            .with_label_values(&[label])
            .inc();
        Ok(match outcome {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err(error) => {
                tracing::info!(code = error.code, "token exchange refused");
                error_response(&error)
            }
        })
    }

    /// The answer, and the claims of the token it carries.
    async fn exchange(
        &self,
        body: &[u8],
        peer: &Arc<PeerIdentity>,
        client: Option<IpAddr>,
    ) -> Result<(Value, Map<String, Value>), TokenError> {
        let request = ExchangeRequest::parse(body)?;
        let xml = decode_assertion(&request.assertion).ok_or(SamlError::Malformed)?;
        let now = now();
        let assertion = self.policy.verify(&xml, peer, now)?;
        if self.check_address
            && let Some(address) = &assertion.confirmation_address
            && !same_address(address, client)
        {
            return Err(SamlError::WrongAddress.into());
        }
        let expires_at = (now + self.lifetime).min(assertion.not_on_or_after);
        if expires_at <= now {
            return Err(SamlError::Expired.into());
        }
        let patient = match &assertion.patient_cpr {
            None => None,
            Some(cpr) => Some(self.patient_id(cpr).await?),
        };
        let granted = match (&patient, assertion.card_type) {
            (Some(_), _) => &self.patient_scope,
            (None, crate::auth::saml::CardType::User) => &self.user_scope,
            (None, crate::auth::saml::CardType::System) => &self.system_scope,
        };
        let scope = match &request.scope {
            None => granted.clone(),
            Some(asked) => {
                let allowed: Vec<&str> = granted.split_whitespace().collect();
                if asked.split_whitespace().any(|s| !allowed.contains(&s)) {
                    return Err(TokenError::new(
                        "invalid_scope",
                        "scope-not-granted",
                        format!("this assertion can be exchanged for at most: {granted}"),
                    ));
                }
                asked.split_whitespace().collect::<Vec<_>>().join(" ")
            }
        };
        if let Some(audience) = &request.audience
            && audience != &self.audience
        {
            return Err(TokenError::new(
                "invalid_target",
                "unknown-audience",
                format!("tokens from here are for {}", self.audience),
            ));
        }
        // Once per assertion, across replicas when Redis is configured. Keyed on the certificate
        // that signed it, never on the issuer it claims: one STS cannot use up another's ids.
        let replay_key = format!("{}\n{}", assertion.signer_fingerprint, assertion.replay_id);
        let until = assertion.not_on_or_after.saturating_add(self.leeway);
        self.replay
            .first_use(&replay_key, until, now)
            .await
            .map_err(|error| match error {
                ReplayError::Replayed => TokenError::from(SamlError::Replayed),
                ReplayError::Unavailable => TokenError::new(
                    "temporarily_unavailable",
                    "replay-cache-unavailable",
                    "the gateway cannot check for replay right now; try again shortly",
                )
                .status(StatusCode::SERVICE_UNAVAILABLE),
            })?;

        let claims = self.claims(&assertion, peer, now, expires_at, &scope, patient);
        let token = self.key.sign(&Value::Object(claims.clone())).map_err(|_| {
            TokenError::new(
                "server_error",
                "signing-failed",
                "the token could not be signed",
            )
            .status(StatusCode::INTERNAL_SERVER_ERROR)
        })?;
        let token_type = if request.oio_form {
            "Holder-of-key"
        } else {
            "Bearer"
        };
        let answer = json!({
            "access_token": token,
            "token_type": token_type,
            "expires_in": expires_at - now,
            "issued_token_type": ACCESS_TOKEN,
            "scope": scope,
        });
        Ok((answer, claims))
    }

    /// The FHIR id of the one Patient with this CPR.
    async fn patient_id(&self, cpr: &str) -> Result<String, TokenError> {
        let cpr = cpr.replace('-', "");
        if cpr.len() != 10 || !cpr.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SamlError::InvalidAttribute.into());
        }
        let ids = self
            .backend
            .patients_with_identifier(CPR_SYSTEM, &cpr)
            .await
            .ok_or_else(|| {
                TokenError::new(
                    "temporarily_unavailable",
                    "patient-lookup-unavailable",
                    "the patient named by the assertion could not be looked up; try again shortly",
                )
                .status(StatusCode::SERVICE_UNAVAILABLE)
            })?;
        match ids.as_slice() {
            [id] => Ok(id.clone()),
            [] => Err(TokenError::new(
                "invalid_grant",
                "unknown-patient",
                "the patient the assertion names is not known",
            )),
            _ => Err(TokenError::new(
                "invalid_grant",
                "ambiguous-patient",
                "the patient the assertion names matches several records",
            )),
        }
    }

    fn claims(
        &self,
        assertion: &VerifiedAssertion,
        peer: &PeerIdentity,
        now: u64,
        expires_at: u64,
        scope: &str,
        patient: Option<String>,
    ) -> Map<String, Value> {
        let mut claims = Map::new();
        let mut put = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                claims.insert(name.to_owned(), value);
            }
        };
        let text = |value: &Option<String>| value.clone().map(Value::String);
        put("iss", Some(self.issuer.clone().into()));
        put("aud", Some(self.audience.clone().into()));
        put("sub", Some(assertion.subject.clone().into()));
        put("sub_fmt", text(&assertion.subject_format));
        put("iat", Some(now.into()));
        put("nbf", Some(now.into()));
        put("exp", Some(expires_at.into()));
        put("jti", Some(uuid::Uuid::new_v4().to_string().into()));
        put("scope", Some(scope.into()));
        put("patient", patient.map(Value::String));
        put("cnf", Some(json!({ "x5t#S256": peer.thumbprint_sha256() })));
        put("src_iss", Some(assertion.issuer.clone().into()));
        put("src_jti", Some(assertion.replay_id.clone().into()));
        put("acr", Some(assertion.acr().into()));
        put("idcard_type", Some(assertion.card_type.as_str().into()));
        put("cpr", text(&assertion.cpr));
        put("given_name", text(&assertion.given_name));
        put("family_name", text(&assertion.family_name));
        put("role", text(&assertion.role));
        put("authorization_id", text(&assertion.authorization_id));
        put("occupation", text(&assertion.occupation));
        put("system_name", text(&assertion.system_name));
        put(
            "care_provider",
            assertion.care_provider.as_ref().map(|provider| {
                json!({ "type": provider.kind, "id": provider.id, "name": provider.name })
            }),
        );
        put("purpose_of_use", text(&assertion.purpose_of_use));
        put("on_behalf_of", text(&assertion.on_behalf_of));
        claims
    }
}

/// Whether the subject confirmation's `Address` (an IPv4 or IPv6 address) is the client's.
fn same_address(address: &str, client: Option<IpAddr>) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match (address.trim().parse::<IpAddr>(), client) {
        (Ok(named), Some(client)) => canonical(named) == canonical(client),
        _ => false,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
