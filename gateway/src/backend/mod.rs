//! A backend FHIR server: its base URL, the pooled client that reaches it (plain HTTP or TLS,
//! with the backend's own CA and, for backend mTLS, a client certificate), its timeouts, retry
//! budget and circuit breaker, and the few requests the gateway makes of it on its own behalf.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, header};
use http_body_util::{BodyExt as _, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub mod circuit;
mod error;
pub mod identity;
pub mod rewrite;

use self::circuit::{CircuitBreaker, CircuitState};
pub use self::error::ProxyError;

/// A response body read whole, up to `max_bytes`: more is the gateway's 502
/// ([`ProxyError::ResponseTooLarge`]), never a cut answer.
pub async fn read_limited<B>(body: B, max_bytes: usize) -> Result<bytes::Bytes, ProxyError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    use http_body_util::BodyExt as _;
    http_body_util::Limited::new(body, max_bytes)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ProxyError::ResponseTooLarge
            } else {
                ProxyError::ResponseBody(e)
            }
        })
}
pub(crate) use self::error::caused_by_body_limit;
use crate::body::{Body, BodyTooLargeError, BoxError, empty};
use crate::config::{BackendConfig, ConfigError};
use crate::encoding::form_encode;
use crate::https::{ClientIdentity, client_tls};
use crate::metrics::Metrics;
use crate::trace::{Lookup, Phase, TRACEPARENT, TRACESTATE, Traced};

/// The backend FHIR server and the pooled client that reaches it.
#[derive(Debug)]
pub struct Backend {
    name: String,
    in_flight: tokio::sync::Semaphore,
    max_in_flight: usize,
    /// The pooled client; a new one (and so a new pool) when the CA or client certificate
    /// files are read again ([`Backend::reload_tls`]).
    client: arc_swap::ArcSwap<Client<HttpsConnector<HttpConnector>, Body>>,
    /// What the client is built from, to build it again.
    transport: Transport,
    circuit: CircuitBreaker,
    response_timeout: Duration,
    retries: u32,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    base_url: String,
    pub(crate) forward_authorization: bool,
    /// Signs the identity assertion every forwarded request carries, when configured.
    pub(crate) identity: Option<identity::IdentityAsserter>,
}

/// The files and settings a backend's client is built from.
#[derive(Debug, Clone)]
struct Transport {
    ca_file: Option<std::path::PathBuf>,
    identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    connect_timeout: Duration,
    pool_max_idle_per_host: usize,
}

impl Transport {
    fn client(&self) -> Result<Client<HttpsConnector<HttpConnector>, Body>, String> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| ClientIdentity { cert, key });
        let tls = client_tls(self.ca_file.as_deref(), identity)?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Ok(Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector))
    }
}

impl Backend {
    /// Parses the backend URL and builds the client.
    pub fn new(config: &BackendConfig) -> Result<Backend, ConfigError> {
        Self::named(config, "backend", "default")
    }

    /// Like [`Backend::new`]; `field` prefixes the config fields in errors, `name` labels its
    /// metrics.
    pub fn named(config: &BackendConfig, field: &str, name: &str) -> Result<Backend, ConfigError> {
        let at = |key: &str| format!("{field}.{key}");
        let uri: Uri = config
            .url
            .parse()
            .map_err(|e| ConfigError::new(at("url"), format!("not a URL: {e}")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| ConfigError::new(at("url"), "needs a scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(ConfigError::new(at("url"), "must be http:// or https://"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| ConfigError::new(at("url"), "needs a host"))?;
        if uri.query().is_some() {
            return Err(ConfigError::new(at("url"), "must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let identity = crate::https::ClientIdentity::from_pair(
            config.client_cert.as_ref(),
            config.client_key.as_ref(),
            at("client_cert"),
        )?
        .map(|identity| (identity.cert.to_path_buf(), identity.key.to_path_buf()));
        let transport = Transport {
            ca_file: config.ca_file.clone(),
            identity,
            connect_timeout: config.connect_timeout,
            pool_max_idle_per_host: config.pool_max_idle_per_host,
        };
        let client = transport
            .client()
            .map_err(|e| ConfigError::new(at("ca_file"), e))?;
        let base_url = format!("{scheme}://{authority}{base_path}");
        let identity = config
            .identity
            .as_ref()
            .map(|identity| identity::IdentityAsserter::new(identity, field, &base_url))
            .transpose()?;
        Ok(Backend {
            name: name.to_owned(),
            in_flight: tokio::sync::Semaphore::new(config.max_in_flight.max(1)),
            max_in_flight: config.max_in_flight.max(1),
            client: arc_swap::ArcSwap::from_pointee(client),
            transport,
            circuit: CircuitBreaker::new(config.circuit_failures, config.circuit_open),
            response_timeout: config.response_timeout,
            retries: config.retries,
            base_url,
            scheme,
            authority,
            base_path,
            forward_authorization: config.forward_authorization,
            identity,
        })
    }

    /// Reads the CA and client certificate files again and, if they load, sends new
    /// connections with them (requests under way finish on the connections they have).
    pub fn reload_tls(&self) -> Result<(), String> {
        let client = self
            .transport
            .client()
            .map_err(|e| format!("{}: {e}", self.name))?;
        self.client.store(Arc::new(client));
        Ok(())
    }

    /// The backend FHIR base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The name in logs and metric labels.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// The state of the backend's circuit breaker.
    pub fn circuit_state(&self) -> CircuitState {
        self.circuit.state(Instant::now())
    }

    /// Sends a request through the circuit breaker, with the response timeout, retrying a GET
    /// or HEAD whose connection failed (its body is empty, so it can be sent again).
    pub(crate) async fn send(
        &self,
        mut request: Request<Body>,
        metrics: &Metrics,
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
        self.circuit
            .admit(Instant::now())
            .map_err(ProxyError::CircuitOpen)?;
        // Bounded in flight: beyond it, refuse at once rather than queue on a slow backend.
        let _permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| ProxyError::Saturated)?;
        let retryable = matches!(*request.method(), Method::GET | Method::HEAD);
        // Who acts, signed anew for each attempt (an assertion is good for one request once).
        // Taken off the request (nothing after this reads them): no copies per request.
        let actor = request.extensions_mut().remove::<identity::ActorClaims>();
        // The call is a span of the request's trace; the backend is told it is the parent.
        let traced = request.extensions_mut().remove::<Traced>();
        let phase = Phase::start(
            traced.as_ref(),
            if request.extensions().get::<Lookup>().is_some() {
                "portvagt.backend.lookup"
            } else {
                "portvagt.backend"
            },
        );
        let template = retryable.then(|| {
            (
                request.method().clone(),
                request.uri().clone(),
                request.headers().clone(),
            )
        });
        let mut request = Some(request);
        let mut attempt = 0;
        loop {
            let outgoing = match (request.take(), &template) {
                (Some(request), _) => request,
                (None, Some((method, uri, headers))) => {
                    let mut again = Request::new(empty());
                    *again.method_mut() = method.clone();
                    *again.uri_mut() = uri.clone();
                    *again.headers_mut() = headers.clone();
                    again
                }
                (None, None) => return Err("no request to send".into()),
            };
            let mut outgoing = outgoing;
            if let Some(traced) = &traced {
                let headers = outgoing.headers_mut();
                headers.insert(TRACEPARENT, traced.context.traceparent(phase.span_id()));
                match &traced.context.state {
                    Some(state) => headers.insert(TRACESTATE, state.clone()),
                    None => headers.remove(TRACESTATE),
                };
            }
            if let (Some(asserter), Some(actor)) = (&self.identity, &actor) {
                let target = outgoing
                    .uri()
                    .path_and_query()
                    .map_or("/", PathAndQuery::as_str);
                let assertion = asserter.assert(actor, outgoing.method().as_str(), target)?;
                outgoing
                    .headers_mut()
                    .insert(identity::IDENTITY_HEADER, assertion);
            }
            let answer =
                tokio::time::timeout(self.response_timeout, self.client.load().request(outgoing))
                    .await;
            let failed = |opened: bool| {
                if opened {
                    metrics.circuit_opened.inc();
                    tracing::warn!(backend = %self.base_url, "circuit opened: the backend keeps failing");
                }
            };
            match answer {
                Err(_) => {
                    failed(self.circuit.failure(Instant::now()));
                    return Err(ProxyError::Timeout.into());
                }
                Ok(Ok(response)) => {
                    let server_error = response.status().is_server_error();
                    if server_error {
                        failed(self.circuit.failure(Instant::now()));
                    } else {
                        self.circuit.success();
                    }
                    // Until the answer's headers: its body is read by the response phase.
                    phase.end(server_error);
                    return Ok(response);
                }
                Ok(Err(error)) => {
                    if caused_by_body_limit(&error) {
                        // The client's streamed body outgrew the limit: not the backend's fault.
                        return Err(BodyTooLargeError.into());
                    }
                    failed(self.circuit.failure(Instant::now()));
                    if template.is_some() && attempt < self.retries {
                        attempt += 1;
                        metrics.upstream_retries.inc();
                        tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
                        self.circuit
                            .admit(Instant::now())
                            .map_err(ProxyError::CircuitOpen)?;
                        continue;
                    }
                    return Err(if error.is_connect() {
                        ProxyError::Unreachable(error).into()
                    } else {
                        ProxyError::Failed(error).into()
                    });
                }
            }
        }
    }

    pub(crate) fn uri(&self, relative: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let path = match query {
            Some(query) => format!("{}/{relative}?{query}", self.base_path),
            None => format!("{}/{relative}", self.base_path),
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path)?)
            .build()
    }

    /// The URI of the backend's own link below its base: `rest` is what followed the base in
    /// it (`/Observation?...`, `?_getpages=...`, or nothing), sent as the backend wrote it.
    pub(crate) fn uri_below(&self, rest: &str) -> Result<Uri, http::Error> {
        let rest = if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
            rest
        } else {
            "/"
        };
        let path = format!("{}{rest}", self.base_path);
        let path = if path.is_empty() || path.starts_with('?') {
            format!("/{path}")
        } else {
            path
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::try_from(path)?)
            .build()
    }

    /// Whether the backend answers `GET metadata` without a server error, within 2 s.
    pub async fn is_ready(&self) -> bool {
        let Ok(uri) = self.uri("metadata", None) else {
            return false;
        };
        let request = Request::get(uri)
            .header(header::ACCEPT, "application/fhir+json")
            .body(empty());
        let Ok(request) = request else { return false };
        match tokio::time::timeout(Duration::from_secs(2), self.client.load().request(request))
            .await
        {
            Ok(Ok(response)) => !response.status().is_server_error(),
            _ => false,
        }
    }
}

/// What the backend answered to a read the gateway made on its own behalf.
#[derive(Debug)]
pub enum Fetched {
    /// 2xx with a FHIR JSON body.
    Found(serde_json::Value),
    /// 404 or 410: nothing there.
    Missing,
}

impl Backend {
    /// A read the gateway makes on its own behalf (an owner before a write, patients by
    /// identifier): through the circuit breaker, the in-flight limit and the response timeout
    /// like every forwarded request. Anything but 2xx with JSON, 404 or 410 is an error
    /// ([`ProxyError::LookupFailed`]): what the gateway cannot read, it does not let through.
    pub async fn fetch_json(
        &self,
        relative: &str,
        query: Option<&str>,
        limit: usize,
        metrics: &Metrics,
    ) -> Result<Fetched, BoxError> {
        let mut request = Request::get(self.uri(relative, query)?)
            .header(header::ACCEPT, "application/fhir+json")
            .body(empty())?;
        if let Some(traced) = crate::trace::current() {
            request.extensions_mut().insert(traced);
            request.extensions_mut().insert(Lookup);
        }
        let response = self.send(request, metrics).await?;
        let status = response.status();
        if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::GONE {
            return Ok(Fetched::Missing);
        }
        if !status.is_success() {
            return Err(ProxyError::LookupFailed(status).into());
        }
        let bytes = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(ProxyError::ResponseBody)?
            .to_bytes();
        // What the gateway decides by (a Consent, an owner) has one meaning: a member given
        // twice is not read either way.
        crate::strict_json::tree_unique(&bytes)
            .map(Fetched::Found)
            .map_err(|_| ProxyError::LookupFailed(status).into())
    }

    /// The ids of the Patients with identifier `system|value`, for the gateway's own lookups
    /// (a SAML assertion names its patient by CPR; the token needs the FHIR id). `None` when
    /// the backend could not be asked or answered something that is not a search Bundle.
    pub async fn patients_with_identifier(&self, system: &str, value: &str) -> Option<Vec<String>> {
        let query = format!(
            "identifier={}&_count=2",
            form_encode(&format!("{system}|{value}"))
        );
        let bundle = self.search_bundle("Patient", &query, 1024 * 1024).await?;
        let entries = bundle.get("entry").and_then(|e| e.as_array());
        Some(
            entries
                .into_iter()
                .flatten()
                .filter_map(|entry| entry.get("resource"))
                .filter(|resource| {
                    resource.get("resourceType").and_then(|t| t.as_str()) == Some("Patient")
                })
                .filter_map(|resource| resource.get("id")?.as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// A search the gateway makes for itself (`GET <type>?<query>`, 5 s, at most `limit`
    /// bytes): the answer if it is a Bundle, `None` otherwise.
    async fn search_bundle(
        &self,
        resource_type: &str,
        query: &str,
        limit: usize,
    ) -> Option<serde_json::Value> {
        let request = Request::get(self.uri(resource_type, Some(query)).ok()?)
            .header(header::ACCEPT, "application/fhir+json")
            .body(empty())
            .ok()?;
        let response =
            tokio::time::timeout(Duration::from_secs(5), self.client.load().request(request))
                .await
                .ok()?
                .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .ok()?
            .to_bytes();
        let bundle = crate::strict_json::tree_unique(&body).ok()?;
        (bundle.get("resourceType")?.as_str()? == "Bundle").then_some(bundle)
    }
}
