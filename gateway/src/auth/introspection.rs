//! Opaque access tokens checked at the issuer's RFC 7662 introspection endpoint.
//!
//! The gateway authenticates to the endpoint with a client secret (`client_secret_basic`) or
//! its own client certificate (`tls_client_auth`, RFC 8705 §2). Answers are cached by the
//! token's SHA-256: an active one until its `exp`, never longer than `cache_ceiling`; an
//! inactive one for `negative_cache`, so a client retrying a revoked token does not become
//! one introspection call per request. The cache holds at most `cache_entries` answers.
//!
//! An active answer must name this issuer (when it names one) and one of the accepted
//! audiences, and be for an access token; the rest (scopes, patient, binding) is read exactly
//! as from a JWT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;
use serde_json::{Map, Value};

use super::AuthnError;
use crate::config::{ConfigError, IntrospectionConfig, IssuerConfig};
use crate::encoding::form_encode;
use crate::https::{ClientIdentity, HttpsClient, https_uri};
use crate::metrics::Metrics;

/// Longest an introspection call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A verified active answer.
#[derive(Debug, Clone)]
pub struct ActiveToken {
    /// The answer's members.
    pub claims: Arc<Map<String, Value>>,
    /// `sub`, else `client_id`.
    pub subject: String,
    /// `exp`, else now + the cache ceiling (seconds since the epoch).
    pub expires_at: u64,
}

#[derive(Debug, Clone)]
enum Cached {
    Active(ActiveToken),
    Inactive,
}

/// One issuer's introspection endpoint.
pub struct Introspector {
    issuer: String,
    /// How this issuer's opaque tokens begin (`token_prefix`).
    prefix: Option<String>,
    url: Uri,
    client: HttpsClient,
    client_id: String,
    /// `Basic` credentials, when authenticating with a secret.
    basic: Option<HeaderValue>,
    audiences: Vec<String>,
    leeway: u64,
    ceiling: Duration,
    negative: Duration,
    capacity: usize,
    cache: Mutex<HashMap<[u8; 32], (Cached, Instant)>>,
    /// Calls under way, by token digest: concurrent misses for one token wait for one call.
    in_flight: Mutex<HashMap<[u8; 32], Flight>>,
    metrics: Arc<Metrics>,
}

/// The outcome of one introspection call, shared by every request that missed the cache for
/// the same token while it ran.
type InFlight = tokio::sync::OnceCell<Result<ActiveToken, AuthnError>>;

/// A call under way and how many requests wait for it (counted under the map's lock).
struct Flight {
    call: Arc<InFlight>,
    waiters: usize,
}

/// Takes a call off the in-flight map when it is answered or its last waiter is gone
/// (cancelled), so that abandoned calls do not pile up.
struct FlightGuard<'a> {
    in_flight: &'a Mutex<HashMap<[u8; 32], Flight>>,
    key: [u8; 32],
    call: Arc<InFlight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = in_flight.get_mut(&self.key)
            && Arc::ptr_eq(&flight.call, &self.call)
        {
            flight.waiters = flight.waiters.saturating_sub(1);
            if flight.waiters == 0 || self.call.initialized() {
                in_flight.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("issuer", &self.issuer)
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Introspector {
    /// Prepares issuer `index`'s endpoint; reads the secret or certificate now, so a missing
    /// one stops the start with the field named.
    pub fn new(
        index: usize,
        issuer: &IssuerConfig,
        config: &IntrospectionConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Introspector, ConfigError> {
        let field = |name: &str| format!("issuer[{index}].introspection.{name}");
        let url = https_uri(&config.url).map_err(|e| ConfigError::new(field("url"), e))?;
        let secret = match (&config.client_secret_file, &config.client_secret_env) {
            (Some(file), None) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| {
                        ConfigError::new(
                            field("client_secret_file"),
                            format!("{}: {e}", file.display()),
                        )
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, Some(name)) => Some(std::env::var(name).map_err(|_| {
                ConfigError::new(
                    field("client_secret_env"),
                    format!("environment variable {name} is not set"),
                )
            })?),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    field("client_secret_file"),
                    "give client_secret_file or client_secret_env, not both",
                ));
            }
        };
        let identity = ClientIdentity::from_pair(
            config.client_cert.as_ref(),
            config.client_key.as_ref(),
            field("client_cert"),
        )?;
        if secret.is_none() == identity.is_none() {
            return Err(ConfigError::new(
                field("client_secret_file"),
                "authenticate with exactly one of a client secret (client_secret_file or \
                 client_secret_env) and a client certificate (client_cert, client_key)",
            ));
        }
        if config.cache_entries == 0 {
            return Err(ConfigError::new(
                field("cache_entries"),
                "must be at least 1",
            ));
        }
        let basic = secret
            .map(|secret| {
                use base64::Engine as _;
                // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
                let credentials = format!(
                    "{}:{}",
                    form_encode(&config.client_id),
                    form_encode(&secret)
                );
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                HeaderValue::try_from(format!("Basic {encoded}"))
            })
            .transpose()
            .map_err(|_| ConfigError::new(field("client_id"), "not usable in a header"))?
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        let client = HttpsClient::new(issuer.ca_file.as_deref(), identity, CALL_TIMEOUT)
            .map_err(|e| ConfigError::new(field("client_cert"), e))?;
        if config.token_prefix.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new(
                field("token_prefix"),
                "is empty; leave it out instead",
            ));
        }
        Ok(Introspector {
            issuer: issuer.issuer.clone(),
            prefix: config.token_prefix.clone(),
            url,
            client,
            client_id: config.client_id.clone(),
            basic,
            audiences: issuer.audiences.clone(),
            leeway: issuer.leeway.as_secs(),
            ceiling: config.cache_ceiling,
            negative: config.negative_cache,
            capacity: config.cache_entries,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The issuer this endpoint belongs to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// How this issuer's opaque tokens begin, if configured.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Whether `token` is active, from the cache or the endpoint.
    pub async fn introspect(&self, token: &str, now: u64) -> Result<ActiveToken, AuthnError> {
        let key = digest(token);
        if let Some(cached) = self.cached(&key) {
            self.count_cache("hit");
            return match cached {
                Cached::Active(active) if active.expires_at + self.leeway >= now => Ok(active),
                Cached::Active(_) => Err(AuthnError::Expired),
                Cached::Inactive => Err(AuthnError::Inactive),
            };
        }
        // One call per token at a time: the first miss asks, the others wait for its answer
        // (if the first is cancelled, the next waiter asks).
        let (call, leader) = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get_mut(&key) {
                Some(flight) => {
                    flight.waiters += 1;
                    (Arc::clone(&flight.call), false)
                }
                None => {
                    let call = Arc::new(InFlight::new());
                    let flight = Flight {
                        call: Arc::clone(&call),
                        waiters: 1,
                    };
                    in_flight.insert(key, flight);
                    (call, true)
                }
            }
        };
        self.count_cache(if leader { "miss" } else { "coalesced" });
        let guard = FlightGuard {
            in_flight: &self.in_flight,
            key,
            call,
        };
        guard
            .call
            .get_or_init(|| self.ask(token, key, now))
            .await
            .clone()
    }

    /// Asks the endpoint about `token` and caches the answer.
    async fn ask(&self, token: &str, key: [u8; 32], now: u64) -> Result<ActiveToken, AuthnError> {
        let answer = match self.call(token).await {
            Ok(answer) => answer,
            Err(error) => {
                self.count_call("error");
                tracing::warn!(issuer = %self.issuer, %error, "token introspection failed");
                return Err(AuthnError::IntrospectionUnavailable);
            }
        };
        match self.judge(answer, now) {
            Ok(active) => {
                self.count_call("active");
                let lifetime = Duration::from_secs(active.expires_at.saturating_sub(now));
                self.store(
                    key,
                    Cached::Active(active.clone()),
                    lifetime.min(self.ceiling),
                );
                Ok(active)
            }
            Err(error) => {
                self.count_call("inactive");
                self.store(key, Cached::Inactive, self.negative);
                Err(error)
            }
        }
    }

    /// Reads an answer (RFC 7662 §2.2) as this issuer's access token, or says why not.
    fn judge(&self, mut answer: Map<String, Value>, now: u64) -> Result<ActiveToken, AuthnError> {
        if answer.get("active") != Some(&Value::Bool(true)) {
            return Err(AuthnError::Inactive);
        }
        let number = |name: &str| match answer.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_u64().map(Some).ok_or(AuthnError::InvalidClaim),
        };
        let exp = number("exp")?;
        if exp.is_some_and(|exp| exp + self.leeway < now) {
            return Err(AuthnError::Expired);
        }
        if number("nbf")?.is_some_and(|nbf| nbf > now + self.leeway) {
            return Err(AuthnError::NotYetValid);
        }
        match answer.get("iss") {
            None | Some(Value::Null) => {}
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => return Err(AuthnError::UnknownIssuer),
        }
        // Refresh tokens and anything else that is not an access token are refused.
        match answer.get("token_type").and_then(Value::as_str) {
            None => {}
            Some(kind) if kind.eq_ignore_ascii_case("bearer") => {}
            Some(kind) if kind.eq_ignore_ascii_case("access_token") => {}
            Some(_) => return Err(AuthnError::InvalidClaim),
        }
        let audience_ok = match answer.get("aud") {
            Some(Value::String(aud)) => self.audiences.contains(aud),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| self.audiences.iter().any(|accepted| accepted == aud)),
            _ => false,
        };
        if !audience_ok {
            return Err(AuthnError::WrongAudience);
        }
        let subject = ["sub", "client_id"]
            .iter()
            .find_map(|name| answer.get(*name).and_then(Value::as_str))
            .ok_or(AuthnError::MissingClaim)?
            .to_owned();
        // The issuer is known even when the answer leaves `iss` out.
        answer.insert("iss".to_owned(), Value::String(self.issuer.clone()));
        Ok(ActiveToken {
            claims: Arc::new(answer),
            subject,
            expires_at: exp.unwrap_or(now + self.ceiling.as_secs()),
        })
    }

    async fn call(&self, token: &str) -> Result<Map<String, Value>, String> {
        let mut form = format!("token={}&token_type_hint=access_token", form_encode(token));
        if self.basic.is_none() {
            // tls_client_auth: the client names itself in the body (RFC 8705 §2).
            form.push_str("&client_id=");
            form.push_str(&form_encode(&self.client_id));
        }
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        if let Some(basic) = &self.basic {
            request = request.header(header::AUTHORIZATION, basic.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        let response = self.client.send(request).await?;
        if !response.status().is_success() {
            // The body may echo what was sent; it is not logged.
            return Err(format!("{}: HTTP {}", self.url, response.status()));
        }
        read_answer(response.body()).map_err(|error| format!("{}: {error}", self.url))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(answer, _)| answer.clone())
    }

    fn store(&self, key: [u8; 32], answer: Cached, lifetime: Duration) {
        if lifetime.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.capacity && !cache.contains_key(&key) {
            // Drop the expired answers; if that frees less than a tenth, drop everything, so
            // a flood of new tokens costs amortised O(1) per insert and never grows memory.
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= self.capacity - self.capacity / 10 {
                cache.clear();
            }
        }
        cache.insert(key, (answer, now + lifetime));
    }

    fn count_call(&self, outcome: &str) {
        self.metrics
            .introspection_calls
            .with_label_values(&[outcome])
            .inc();
    }

    fn count_cache(&self, result: &str) {
        self.metrics
            .introspection_cache
            .with_label_values(&[result])
            .inc();
    }
}

/// The cache key: the token itself is never kept.
fn digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

/// An introspection answer: a JSON object in which no member is given twice (an answer with
/// `"active": true` and then `"active": false` means what the reader makes of it).
fn read_answer(body: &[u8]) -> Result<Map<String, Value>, String> {
    crate::strict_json::from_slice_unique(body).map_err(|error| match error {
        crate::strict_json::StrictJsonError::Duplicate(name) => {
            format!("the answer gives {name:?} twice")
        }
        crate::strict_json::StrictJsonError::Syntax(_) => "the answer is not a JSON object".into(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_answer_that_gives_a_member_twice_is_not_read() {
        assert!(read_answer(br#"{"active":true,"sub":"u"}"#).is_ok());
        for twice in [
            &br#"{"active":false,"sub":"u","active":true}"#[..],
            br#"{"active":true,"cnf":{"x5t#S256":"a","x5t#S256":"b"}}"#,
            br#"{"active":true,"scope":"openid","sc\u006fpe":"user/*.cruds"}"#,
        ] {
            let error = read_answer(twice).unwrap_err();
            assert!(error.contains("twice"), "{error}");
        }
        assert!(read_answer(b"[]").is_err());
    }

    fn introspector(capacity: usize) -> Introspector {
        introspector_at("https://as.test/introspect", capacity)
    }

    fn introspector_at(url: &str, capacity: usize) -> Introspector {
        let issuer = IssuerConfig::new("https://as.test", vec!["https://fhir.test/fhir".into()]);
        let config = IntrospectionConfig {
            url: url.into(),
            client_id: "gateway".into(),
            client_secret_file: None,
            client_secret_env: Some("PATH".into()),
            client_cert: None,
            client_key: None,
            cache_ceiling: Duration::from_secs(300),
            negative_cache: Duration::from_secs(10),
            cache_entries: capacity,
            token_prefix: None,
        };
        Introspector::new(0, &issuer, &config, Arc::new(Metrics::new())).unwrap()
    }

    #[tokio::test]
    async fn waiters_that_all_give_up_leave_no_call_behind() {
        // An endpoint that takes the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let introspector = Arc::new(introspector_at(&format!("https://{addr}/introspect"), 10));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let introspector = Arc::clone(&introspector);
                tokio::spawn(async move { introspector.introspect("tok", 1).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        {
            let in_flight = introspector.in_flight.lock().unwrap();
            assert_eq!(in_flight.len(), 1, "one call for the three");
            assert_eq!(in_flight.values().next().unwrap().waiters, 3);
        }
        // All three hang up at once (clients gone, request timeouts).
        for waiter in &waiters {
            waiter.abort();
        }
        for waiter in waiters {
            assert!(waiter.await.unwrap_err().is_cancelled());
        }
        assert!(introspector.in_flight.lock().unwrap().is_empty());
    }

    fn judge(answer: Value) -> Result<ActiveToken, AuthnError> {
        introspector(10).judge(answer.as_object().unwrap().clone(), 1_000_000)
    }

    #[test]
    fn active_answers_for_this_resource_are_accepted() {
        let active = judge(json!({ "active": true, "aud": ["x", "https://fhir.test/fhir"], "client_id": "app", "exp": 1_000_100, "scope": "system/*.rs", "token_type": "Bearer" })).unwrap();
        assert_eq!(active.subject, "app");
        assert_eq!(active.expires_at, 1_000_100);
        assert_eq!(active.claims["iss"], "https://as.test");
        // Without exp: the ceiling.
        let active =
            judge(json!({ "active": true, "aud": "https://fhir.test/fhir", "sub": "u" })).unwrap();
        assert_eq!(active.expires_at, 1_000_300);
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let aud = "https://fhir.test/fhir";
        let cases = [
            (json!({ "active": false }), AuthnError::Inactive),
            (
                json!({ "active": "true", "aud": aud, "sub": "u" }),
                AuthnError::Inactive,
            ),
            (json!({ "aud": aud, "sub": "u" }), AuthnError::Inactive),
            (
                json!({ "active": true, "sub": "u" }),
                AuthnError::WrongAudience,
            ),
            (
                json!({ "active": true, "aud": "https://other", "sub": "u" }),
                AuthnError::WrongAudience,
            ),
            (
                json!({ "active": true, "aud": aud }),
                AuthnError::MissingClaim,
            ),
            (
                json!({ "active": true, "aud": aud, "sub": "u", "exp": 999_000 }),
                AuthnError::Expired,
            ),
            (
                json!({ "active": true, "aud": aud, "sub": "u", "exp": "soon" }),
                AuthnError::InvalidClaim,
            ),
            (
                json!({ "active": true, "aud": aud, "sub": "u", "nbf": 1_001_000 }),
                AuthnError::NotYetValid,
            ),
            (
                json!({ "active": true, "aud": aud, "sub": "u", "iss": "https://evil" }),
                AuthnError::UnknownIssuer,
            ),
            (
                json!({ "active": true, "aud": aud, "sub": "u", "token_type": "refresh_token" }),
                AuthnError::InvalidClaim,
            ),
        ];
        for (answer, expected) in cases {
            assert_eq!(judge(answer.clone()).unwrap_err(), expected, "{answer}");
        }
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let introspector = introspector(100);
        for i in 0..1_000u32 {
            let mut key = [0; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            introspector.store(key, Cached::Inactive, Duration::from_secs(60));
            assert!(introspector.cache.lock().unwrap().len() <= 100);
        }
        let mut last = [0; 32];
        last[..4].copy_from_slice(&999u32.to_be_bytes());
        assert!(matches!(introspector.cached(&last), Some(Cached::Inactive)));
    }

    #[test]
    fn client_authentication_problems_name_the_field() {
        let issuer = IssuerConfig::new("https://as.test", vec!["x".into()]);
        let base = IntrospectionConfig {
            url: "https://as.test/introspect".into(),
            client_id: "gateway".into(),
            client_secret_file: None,
            client_secret_env: None,
            client_cert: None,
            client_key: None,
            cache_ceiling: Duration::from_secs(300),
            negative_cache: Duration::from_secs(10),
            cache_entries: 10,
            token_prefix: None,
        };
        let field = |config: IntrospectionConfig| {
            Introspector::new(0, &issuer, &config, Arc::new(Metrics::new()))
                .unwrap_err()
                .field
        };
        assert_eq!(
            field(base.clone()),
            "issuer[0].introspection.client_secret_file"
        );
        assert_eq!(
            field(IntrospectionConfig {
                client_secret_file: Some("/nonexistent/secret".into()),
                ..base.clone()
            }),
            "issuer[0].introspection.client_secret_file"
        );
        assert_eq!(
            field(IntrospectionConfig {
                client_cert: Some("/nonexistent/c.crt".into()),
                ..base.clone()
            }),
            "issuer[0].introspection.client_cert"
        );
        assert_eq!(
            field(IntrospectionConfig {
                client_secret_env: Some("PATH".into()),
                client_cert: Some("a".into()),
                client_key: Some("b".into()),
                ..base.clone()
            }),
            "issuer[0].introspection.client_secret_file"
        );
        assert_eq!(
            field(IntrospectionConfig {
                url: "http://as.test/introspect".into(),
                ..base
            }),
            "issuer[0].introspection.url"
        );
    }
}
