//! Local endpoints the gateway answers itself: `/healthz` (the process runs), `/readyz` (the
//! backend answers), `/metrics` (Prometheus) and the SMART configuration document
//! (SMART App Launch 2.2 §2.1, at `/.well-known/smart-configuration` below the FHIR base and at
//! the root), and the public keys backends check the gateway's identity assertions with
//! (`/.well-known/portvagt-identity-jwks.json`, [`crate::backend::identity`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::audit::Auditor;
use crate::backend::circuit::CircuitState;
use crate::body::{Body, full};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outcome::Outcome;
use crate::routing::SharedRoutes;
use crate::smart::SmartDocuments;

/// How long the CapabilityStatement answered without a token is kept before it is read again,
/// and how long a failed read stands before the backend is asked again.
const CAPABILITIES_FOR: Duration = Duration::from_secs(60);
const CAPABILITIES_FAILED_FOR: Duration = Duration::from_secs(10);
/// The longest the gateway waits for it.
const CAPABILITIES_WAIT: Duration = Duration::from_secs(10);
/// The largest CapabilityStatement read for it.
const CAPABILITIES_LIMIT: usize = 4 * 1024 * 1024;

/// Answers the local endpoints.
#[derive(Debug)]
pub struct Admin {
    metrics: Arc<Metrics>,
    upstreams: SharedRoutes,
    smart: Arc<SmartDocuments>,
    smart_path: String,
    metrics_on_client_listener: bool,
    last_probe: Mutex<Option<(Instant, Readiness)>>,
    auditor: Option<Arc<Auditor>>,
    /// Whether `/metadata` is answered without a token on the client and the citizen listener.
    metadata_without_token: (bool, bool),
    /// The CapabilityStatements answered without a token, by FHIR base path, and when read
    /// (`None`: the read failed).
    capabilities: Mutex<std::collections::HashMap<String, (Instant, Option<Bytes>)>>,
    /// One read of the backend's statement at a time: concurrent misses wait for it.
    reading_capabilities: tokio::sync::Mutex<()>,
    /// What replicas should share and do not ([`Config::unshared_state`]): a ready gateway
    /// says so (`warn`).
    unshared: Vec<&'static str>,
}

/// What readiness found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Ready,
    BackendDown,
    SpoolUnwritable,
    /// The spool's file system has less than `[audit] min_free_bytes` free.
    SpoolLow,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The mTLS client listener.
    Client,
    /// The plain-HTTP admin listener (`server.admin_listen`).
    Admin,
    /// The citizen listener (`[citizen]`): TLS without client certificates.
    Citizen,
}

/// Which local endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEndpoint {
    /// `/healthz`
    Health,
    /// `/readyz`
    Ready,
    /// `/metrics`
    Metrics,
    /// `/.well-known/smart-configuration`
    SmartConfiguration,
    /// `/.well-known/portvagt-identity-jwks.json`
    IdentityKeys,
}

impl Admin {
    /// Builds the endpoints.
    pub fn new(
        config: &Config,
        fhir_base_path: &str,
        metrics: Arc<Metrics>,
        upstreams: SharedRoutes,
        smart: Arc<SmartDocuments>,
        auditor: Option<Arc<Auditor>>,
    ) -> Self {
        Self {
            auditor,
            metrics,
            upstreams,
            smart,
            metrics_on_client_listener: config.server.admin_listen.is_none(),
            last_probe: Mutex::new(None),
            metadata_without_token: (
                config.server.metadata_without_token,
                config
                    .citizen
                    .as_ref()
                    .is_some_and(|citizen| citizen.metadata_without_token),
            ),
            capabilities: Mutex::new(std::collections::HashMap::new()),
            unshared: config.unshared_state(),
            reading_capabilities: tokio::sync::Mutex::new(()),
            smart_path: format!(
                "{}/.well-known/smart-configuration",
                fhir_base_path.trim_end_matches('/')
            ),
        }
    }

    /// The endpoint `path` names on `listener`, if any. The admin listener serves the probes
    /// and metrics only; the client listener serves probes, the SMART document, and metrics
    /// only when there is no admin listener to keep them private on; the citizen listener
    /// serves `/healthz` and the SMART document (its page signs in with it), never readiness
    /// details or metrics. Every listener serves the identity assertions' public keys.
    pub fn route(&self, method: &Method, path: &str, listener: Listener) -> Option<LocalEndpoint> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let on_main = listener == Listener::Client;
        let serves_smart = listener != Listener::Admin;
        match path {
            "/healthz" => Some(LocalEndpoint::Health),
            // Readiness names what is failing: for operators and probes, not the public.
            "/readyz" if listener != Listener::Citizen => Some(LocalEndpoint::Ready),
            "/metrics"
                if listener == Listener::Admin || (on_main && self.metrics_on_client_listener) =>
            {
                Some(LocalEndpoint::Metrics)
            }
            // Public keys: on every listener, the admin one too (where a backend inside the
            // cluster may fetch them without a client certificate).
            "/.well-known/portvagt-identity-jwks.json" => Some(LocalEndpoint::IdentityKeys),
            "/.well-known/smart-configuration" if serves_smart => {
                Some(LocalEndpoint::SmartConfiguration)
            }
            p if serves_smart && p == self.smart_path => Some(LocalEndpoint::SmartConfiguration),
            _ => None,
        }
    }

    /// `GET <base>/metadata` on `listener` asked without a token, for JSON, where that is
    /// answered here: the FHIR base path (a route's that takes every type). Only that exact
    /// path and a query of at most `_format` (JSON) and `_pretty`: any other spelling, a
    /// `mode`, XML (its conversion is work for authenticated callers), or a token presented
    /// goes the usual way, through authentication.
    pub fn open_metadata(
        &self,
        request: &http::Request<Body>,
        listener: Listener,
    ) -> Option<String> {
        let open = match listener {
            Listener::Client => self.metadata_without_token.0,
            Listener::Citizen => self.metadata_without_token.1,
            Listener::Admin => false,
        };
        let method = request.method();
        if !open
            || (method != Method::GET && method != Method::HEAD)
            || request.headers().contains_key(header::AUTHORIZATION)
        {
            return None;
        }
        // The format layer above has taken the `_format` it answers out, and says what was
        // asked for; one it does not answer stays, and goes the usual way.
        let query = request.uri().query();
        let plain_query = query.is_none_or(|query| {
            query.split('&').all(|pair| {
                pair.split_once('=')
                    .is_some_and(|(name, _)| name == "_pretty")
            })
        });
        let asked = request
            .extensions()
            .get::<crate::format::Representation>()
            .copied()
            .unwrap_or_else(|| crate::format::negotiate(request.headers(), query));
        let json = asked == crate::format::Representation::Json;
        let base = request.uri().path().strip_suffix("/metadata")?;
        let routed = || {
            self.upstreams
                .load()
                .iter()
                .any(|route| takes_every_type_at(route, base))
        };
        (plain_query && json && routed()).then(|| base.to_owned())
    }

    /// The route (one that takes every type) whose FHIR base is `base`.
    fn route_for(&self, base: &str) -> Option<crate::routing::Route> {
        self.upstreams
            .load()
            .iter()
            .find(|route| takes_every_type_at(route, base))
            .cloned()
    }

    /// The CapabilityStatement of the backend under FHIR base `base`, its security section
    /// Portvagt's ([`SmartDocuments::rewrite_capability_statement`]) and its `implementation`
    /// the gateway's public base; read at most once per [`CAPABILITIES_FOR`] (one read at a
    /// time), a failed read standing for [`CAPABILITIES_FAILED_FOR`]. `None` when it cannot be
    /// had (the backend wants a token, is down, or answers something else): then the request
    /// goes the usual way.
    pub async fn capabilities(&self, base: &str) -> Option<Response<Body>> {
        let cached = |admin: &Admin| {
            admin
                .capabilities
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(base)
                .filter(|(at, body)| {
                    at.elapsed()
                        < if body.is_some() {
                            CAPABILITIES_FOR
                        } else {
                            CAPABILITIES_FAILED_FOR
                        }
                })
                .map(|(_, body)| body.clone())
        };
        if let Some(body) = cached(self) {
            return body.map(capabilities_response);
        }
        let _one = self.reading_capabilities.lock().await;
        if let Some(body) = cached(self) {
            return body.map(capabilities_response);
        }
        let route = self.route_for(base)?;
        let read = tokio::time::timeout(
            CAPABILITIES_WAIT,
            route
                .backend
                .fetch_json("metadata", None, CAPABILITIES_LIMIT, &self.metrics),
        )
        .await;
        let body = match read {
            // Only a CapabilityStatement describes the base: anything else the backend answers
            // there (an OperationOutcome, a TerminologyCapabilities) is not served as one.
            Ok(Ok(crate::backend::Fetched::Found(statement)))
                if statement
                    .get("resourceType")
                    .and_then(serde_json::Value::as_str)
                    == Some("CapabilityStatement") =>
            {
                serde_json::to_vec(&statement)
                    .ok()
                    .and_then(|bytes| {
                        self.smart
                            .rewrite_capability_statement(&bytes, &route.rewriter)
                    })
                    .map(Bytes::from)
            }
            _ => None,
        };
        self.capabilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(base.to_owned(), (Instant::now(), body.clone()));
        body.map(capabilities_response)
    }

    /// Ready means: every route's backend answers and its circuit is not open, and the audit
    /// spool can be written. Probed at most once a second, so readiness checks cannot be turned into load.
    async fn readiness(&self) -> Readiness {
        if let Some((at, readiness)) = *self.last_probe.lock().unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < Duration::from_secs(1)
        {
            return readiness;
        }
        // Every route needs its backend: one that fails makes the gateway not ready.
        let mut backend_ok = true;
        for route in self.upstreams.load().iter() {
            backend_ok &= route.backend.circuit_state() != CircuitState::Open
                && route.backend.is_ready().await;
        }
        let (spool_ok, headroom) = match &self.auditor {
            Some(auditor) => (auditor.spool_writable().await, auditor.spool_has_headroom()),
            None => (true, true),
        };
        let readiness = match (backend_ok, spool_ok, headroom) {
            (false, _, _) => Readiness::BackendDown,
            (true, false, _) => Readiness::SpoolUnwritable,
            (true, true, false) => Readiness::SpoolLow,
            (true, true, true) => Readiness::Ready,
        };
        *self.last_probe.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), readiness));
        readiness
    }

    /// Answers `endpoint`.
    pub async fn respond(&self, endpoint: LocalEndpoint) -> Response<Body> {
        match endpoint {
            LocalEndpoint::Health => {
                json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"pass"}"#))
            }
            LocalEndpoint::Ready => match self.readiness().await {
                // Ready, but what replicas should share is each one's own: still ready (the
                // replica serves correctly on its own), with the reasons, as health+json's
                // `warn` has them.
                Readiness::Ready if !self.unshared.is_empty() => json_response(
                    StatusCode::OK,
                    Bytes::from(
                        serde_json::json!({ "status": "warn", "notes": self.unshared }).to_string(),
                    ),
                ),
                Readiness::Ready => {
                    json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"pass"}"#))
                }
                Readiness::BackendDown => Outcome::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "backend-unavailable",
                    "the backend FHIR server does not answer",
                )
                .into_response(None),
                Readiness::SpoolUnwritable => Outcome::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "audit-spool-unwritable",
                    "the audit spool cannot be written",
                )
                .into_response(None),
                Readiness::SpoolLow => Outcome::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "transient",
                    "audit-spool-low",
                    "the audit spool's disk is nearly full",
                )
                .into_response(None),
            },
            LocalEndpoint::Metrics => {
                if let Some(auditor) = &self.auditor {
                    auditor.spool_space();
                }
                for route in self.upstreams.load().iter() {
                    let name = route.backend.name();
                    self.metrics
                        .backend_in_flight
                        .with_label_values(&[name])
                        .set(i64::try_from(route.backend.in_flight()).unwrap_or(i64::MAX));
                    let open = route.backend.circuit_state() == CircuitState::Open;
                    self.metrics
                        .backend_circuit_open
                        .with_label_values(&[name])
                        .set(i64::from(open));
                }
                let mut response = Response::new(full(self.metrics.render()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            LocalEndpoint::IdentityKeys => {
                // Every backend's key, once each (the routes in force: a reload that adds a
                // backend publishes its key).
                let mut keys: Vec<serde_json::Value> = Vec::new();
                for route in self.upstreams.load().iter() {
                    if let Some(asserter) = &route.backend.identity {
                        let key = asserter.jwk();
                        if !keys.contains(&key) {
                            keys.push(key);
                        }
                    }
                }
                json_response(
                    StatusCode::OK,
                    Bytes::from(serde_json::json!({ "keys": keys }).to_string()),
                )
            }
            LocalEndpoint::SmartConfiguration => json_response(
                StatusCode::OK,
                Bytes::from(self.smart.configuration().to_string()),
            ),
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Whether `route` takes every resource type under FHIR base `base`.
fn takes_every_type_at(route: &crate::routing::Route, base: &str) -> bool {
    route.resource_types.is_empty() && route.base_path.trim_end_matches('/') == base
}

/// The CapabilityStatement, as FHIR JSON.
fn capabilities_response(body: Bytes) -> Response<Body> {
    let mut response = json_response(StatusCode::OK, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    response
}
