//! Per-client rate limits: at most `requests` per `window` for each client, keyed by the
//! token's issuer and subject or by the client certificate, answered 429 with `Retry-After`
//! beyond that. One replica counts in memory; several share the count through Redis (one
//! `INCR` per request on a key per client and window), and fall back to their own count, with a
//! warning, while Redis cannot be reached: a limit is a brake, not a lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::auth::Principal;
use crate::body::{Body, BoxError};
use crate::config::{RateLimitConfig, RateLimitKey};
use crate::context::record;
use crate::metrics::Metrics;
use crate::redis::{RedisClient, Reply};
use crate::tls::PeerIdentity;

/// Over the limit: answered 429.
#[derive(Debug, thiserror::Error)]
#[error("too many requests from this client")]
pub struct RateLimitedError {
    /// Seconds until the window ends.
    pub retry_after: u64,
}

/// The limiter, shared by every connection.
#[derive(Debug)]
pub struct RateLimiter {
    requests: u64,
    window_ms: u64,
    key: RateLimitKey,
    redis: Option<RedisClient>,
    local: Mutex<HashMap<String, (u64, u64)>>,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    /// Prepares the limiter; errors name the config field.
    pub fn new(
        config: &RateLimitConfig,
        metrics: Arc<Metrics>,
        redis: &crate::redis::RedisSettings,
    ) -> Result<RateLimiter, crate::config::ConfigError> {
        let field = |name: &str| format!("rate_limit.{name}");
        if config.requests == 0 {
            return Err(crate::config::ConfigError::new(
                field("requests"),
                "must be at least 1",
            ));
        }
        let window_ms = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
        if window_ms < 100 {
            return Err(crate::config::ConfigError::new(
                field("window"),
                "must be at least 100ms",
            ));
        }
        let redis = config
            .redis_url
            .as_deref()
            .map(|url| RedisClient::from_url(url, std::time::Duration::from_millis(500), redis))
            .transpose()
            .map_err(|e| crate::config::ConfigError::new(field("redis_url"), e))?;
        Ok(RateLimiter {
            requests: config.requests,
            window_ms,
            key: config.key,
            redis,
            local: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Counts one request of `client`; refuses it beyond the limit.
    async fn admit(&self, client: &str) -> Result<(), RateLimitedError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let window = now_ms / self.window_ms;
        let retry_after = ((window + 1) * self.window_ms - now_ms)
            .div_ceil(1000)
            .max(1);
        let count = match &self.redis {
            Some(redis) => match self.shared_count(redis, client, window).await {
                Some(count) => count,
                None => self.local_count(client, window),
            },
            None => self.local_count(client, window),
        };
        if count > self.requests {
            self.metrics.rate_limited.inc();
            return Err(RateLimitedError { retry_after });
        }
        Ok(())
    }

    fn local_count(&self, client: &str, window: u64) -> u64 {
        let mut counts = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > 100_000 {
            counts.retain(|_, (w, _)| *w == window);
        }
        let entry = counts.entry(client.to_owned()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        entry.1
    }

    async fn shared_count(&self, redis: &RedisClient, client: &str, window: u64) -> Option<u64> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, client.as_bytes());
        let hex: String = digest.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = format!("portvagt:rate:{hex}:{window}");
        let counted = async {
            let count = match redis.command(&[b"INCR", key.as_bytes()]).await {
                Ok(Reply::Integer(count)) => u64::try_from(count).ok()?,
                _ => return None,
            };
            if count == 1 {
                let ttl = (self.window_ms * 2).to_string();
                let _ = redis
                    .command(&[b"PEXPIRE", key.as_bytes(), ttl.as_bytes()])
                    .await;
            }
            Some(count)
        };
        let count = counted.await;
        if count.is_none() {
            tracing::warn!("rate limit: Redis unavailable, counting in this replica only");
        }
        count
    }

    fn client_key(&self, request: &Request<Body>) -> Option<String> {
        let subject = || {
            request
                .extensions()
                .get::<Arc<Principal>>()
                .map(|p| format!("{}\n{}", p.issuer(), p.subject()))
        };
        match self.key {
            RateLimitKey::Subject => subject(),
            // Without a certificate (the citizen listener) each citizen counts alone, not all
            // of them as one.
            RateLimitKey::Certificate => match request.extensions().get::<Arc<PeerIdentity>>() {
                Some(peer) if peer.has_certificate() => Some(peer.thumbprint_sha256().to_owned()),
                _ => subject(),
            },
        }
    }
}

/// Applies the limiter, if one is configured.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<RateLimiter>>,
}

impl RateLimitLayer {
    /// Limits with `limiter`; with `None`, nothing is limited.
    pub fn new(limiter: Option<Arc<RateLimiter>>) -> Self {
        Self { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<RateLimiter>>,
}

impl<S> Service<Request<Body>> for RateLimit<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let Some(limiter) = self.limiter.clone() else {
            return Box::pin(async move { inner.call(request).await });
        };
        Box::pin(async move {
            if let Some(client) = limiter.client_key(&request)
                && let Err(limited) = limiter.admit(&client).await
            {
                record(&request, |fields| fields.reason = Some("rate-limited"));
                return Err(limited.into());
            }
            inner.call(request).await
        })
    }
}
