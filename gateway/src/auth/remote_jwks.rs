//! Issuer keys fetched over HTTPS (RFC 7517 JWKS, found directly or by RFC 8414 / OpenID
//! discovery), held in memory and swapped atomically.
//!
//! Verifying with a known key never waits on the network. Keys are refreshed in the background
//! every `jwks_refresh`, and at once when a token names an unknown `kid` (key rotation), but
//! such forced refreshes happen at most once per `jwks_min_refresh`, so a flood of made-up
//! `kid`s cannot hammer the issuer. If a fetch fails, the keys already held stay in use
//! (stale-while-revalidate).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;

use super::jwks::{self, VerificationKey};
use crate::config::{ConfigError, IssuerConfig};
use crate::https::{HttpsClient, https_uri};
use crate::metrics::Metrics;

/// Longest a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the JWKS is found.
#[derive(Debug, Clone)]
enum Location {
    /// A configured JWKS URL.
    Url(Uri),
    /// The issuer's discovery documents, which name `jwks_uri`.
    Discovery(String),
}

/// One issuer's remote key set.
pub struct RemoteJwks {
    issuer: String,
    location: Location,
    client: HttpsClient,
    keys: ArcSwap<Vec<VerificationKey>>,
    discovered: ArcSwapOption<serde_json::Value>,
    last_forced: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
    refresh_every: Duration,
    min_forced_interval: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("issuer", &self.issuer)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl RemoteJwks {
    /// Prepares the source for issuer `index` (no network yet).
    pub fn new(
        index: usize,
        config: &IssuerConfig,
        metrics: Arc<Metrics>,
    ) -> Result<RemoteJwks, ConfigError> {
        let field = |name: &str| format!("issuer[{index}].{name}");
        let location = match (&config.jwks_url, config.discovery) {
            (Some(url), false) => {
                Location::Url(https_uri(url).map_err(|e| ConfigError::new(field("jwks_url"), e))?)
            }
            (None, true) => {
                https_uri(&config.issuer).map_err(|e| {
                    ConfigError::new(field("issuer"), format!("discovery needs {e}"))
                })?;
                Location::Discovery(config.issuer.trim_end_matches('/').to_owned())
            }
            _ => {
                return Err(ConfigError::new(
                    field("jwks_url"),
                    "give exactly one of jwks_file, jwks_url, discovery",
                ));
            }
        };
        let client = HttpsClient::new(config.ca_file.as_deref(), None, FETCH_TIMEOUT)
            .map_err(|e| ConfigError::new(field("ca_file"), e))?;
        Ok(RemoteJwks {
            issuer: config.issuer.clone(),
            location,
            client,
            keys: ArcSwap::from_pointee(Vec::new()),
            discovered: ArcSwapOption::empty(),
            last_forced: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            refresh_every: config.jwks_refresh,
            min_forced_interval: config.jwks_min_refresh,
            metrics,
        })
    }

    /// The keys held now.
    pub fn keys(&self) -> Arc<Vec<VerificationKey>> {
        self.keys.load_full()
    }

    /// The issuer's discovery document as last fetched (with `discovery = true`).
    pub fn discovery_document(&self) -> Option<Arc<serde_json::Value>> {
        self.discovered.load_full()
    }

    /// Refreshes now; keeps the old keys if the fetch fails.
    pub async fn refresh(&self) -> Result<(), String> {
        let _one_at_a_time = self.fetching.lock().await;
        let result = self.fetch().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .jwks_fetches
            .with_label_values(&[outcome])
            .inc();
        match result {
            Ok(keys) => {
                self.keys.store(Arc::new(keys));
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "JWKS refresh failed; keeping the keys held");
                Err(error)
            }
        }
    }

    /// A token named a `kid` not held: refresh, unless a forced refresh ran too recently.
    /// A rate-limited caller still waits for a fetch in flight (the one another request with
    /// the same new `kid` started), so concurrent first uses of a rotated key all succeed.
    /// Returns whether the held keys may have changed, i.e. whether to look again.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let rate_limited = {
            let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.min_forced_interval) {
                true
            } else {
                *last = Some(Instant::now());
                false
            }
        };
        if rate_limited {
            self.metrics
                .jwks_fetches
                .with_label_values(&["rate-limited"])
                .inc();
            drop(self.fetching.lock().await);
            return true;
        }
        self.refresh().await.is_ok()
    }

    /// Refreshes every `jwks_refresh`, for as long as the gateway runs.
    pub async fn refresh_periodically(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.refresh_every).await;
            let _ = self.refresh().await;
        }
    }

    async fn fetch(&self) -> Result<Vec<VerificationKey>, String> {
        let jwks_uri = match &self.location {
            Location::Url(uri) => uri.clone(),
            Location::Discovery(issuer) => self.discover(issuer).await?,
        };
        let text = self.get(&jwks_uri).await?;
        jwks::parse(&text)
    }

    /// RFC 8414 §3 / OpenID Discovery 1.0 §4: the document must name this issuer.
    async fn discover(&self, issuer: &str) -> Result<Uri, String> {
        let mut last_error = String::new();
        for suffix in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let uri = https_uri(&format!("{issuer}{suffix}"))?;
            match self.get(&uri).await {
                Ok(text) => {
                    let document: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| format!("{uri}: {e}"))?;
                    if document["issuer"].as_str().map(|i| i.trim_end_matches('/')) != Some(issuer)
                    {
                        return Err(format!("{uri}: the document names another issuer"));
                    }
                    let jwks_uri = document["jwks_uri"]
                        .as_str()
                        .ok_or_else(|| format!("{uri}: no jwks_uri"))
                        .and_then(https_uri)?;
                    self.discovered.store(Some(Arc::new(document)));
                    return Ok(jwks_uri);
                }
                Err(error) => last_error = error,
            }
        }
        Err(last_error)
    }

    async fn get(&self, uri: &Uri) -> Result<String, String> {
        let request = Request::get(uri.clone())
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = self.client.send(request).await?;
        if !response.status().is_success() {
            return Err(format!("{uri}: HTTP {}", response.status()));
        }
        String::from_utf8(response.into_body().to_vec()).map_err(|_| format!("{uri}: not UTF-8"))
    }
}
