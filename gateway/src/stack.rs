//! THE request path, outermost layer first. Every request walks it once, in this order, and the
//! response walks back. To change what happens to a request, start here.

use std::sync::Arc;

use http::{Request, Response};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneService;

use crate::admin::Listener;
use crate::body::{Body, BoxError};
use crate::layers::access_log::AccessLogLayer;
use crate::layers::audit::AuditLayer;
use crate::layers::authenticate::AuthenticateLayer;
use crate::layers::authorize::AuthorizeLayer;
use crate::layers::body_limit::BodyLimitLayer;
use crate::layers::classify::ClassifyLayer;
use crate::layers::format::FormatLayer;
use crate::layers::local::LocalEndpointsLayer;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::request_id::RequestIdLayer;
use crate::layers::token_endpoint::TokenEndpointLayer;
use crate::layers::trace::TraceLayer;
use crate::minlog::Page;
use crate::proxy::Proxy;
use crate::runtime::Runtime;

/// The stack as one cloneable service; each connection gets a clone.
pub type GatewayService = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// Builds the stack for `runtime`. The connection layer (TLS, [`crate::tls::PeerIdentity`],
/// client address) is in [`crate::server`].
pub fn build(runtime: &Runtime) -> GatewayService {
    build_for(runtime, Listener::Client, None)
}

/// The citizen listener's stack: the same path, but the local endpoints without metrics and
/// with the `/minlog/` page, no token exchange (it needs a client certificate), and only what
/// a citizen may do on this listener getting to the policy.
pub fn build_citizen(runtime: &Runtime, local: std::net::SocketAddr) -> GatewayService {
    build_for(runtime, Listener::Citizen, Some(local))
}

fn build_for(
    runtime: &Runtime,
    listener: Listener,
    citizen_addr: Option<std::net::SocketAddr>,
) -> GatewayService {
    let limits = &runtime.config.limits;
    let citizen = runtime
        .config
        .citizen
        .as_ref()
        .filter(|_| listener == Listener::Citizen);
    let page = citizen.filter(|c| c.page).map(|c| {
        // Without the announcement on Redis, other replicas see a block once their cached
        // Consents expire: the page says so.
        let within = runtime
            .config
            .consent
            .as_ref()
            .filter(|consent| consent.redis_url.is_none() && runtime.config.server.replicas > 1)
            .map(|consent| consent.cache_ttl);
        Arc::new(Page::new(
            c,
            &runtime.config.smart,
            &runtime.fhir_base_path,
            within,
        ))
    });
    let authorize = match citizen {
        Some(c) => AuthorizeLayer::citizen(
            runtime.metrics.clone(),
            runtime.rules.clone(),
            &c.resource_types,
            c.blocks,
        ),
        None => AuthorizeLayer::new(runtime.metrics.clone(), runtime.rules.clone()),
    }
    .with_decisions(runtime.decisions.clone());
    let token_exchange = match listener {
        Listener::Citizen => None,
        _ => runtime.token_exchange.clone(),
    };
    let service = ServiceBuilder::new()
        // Request id first, so the access log and every error answer carry it.
        .layer(RequestIdLayer)
        // The W3C trace context (continued from a trusted client, or started), so the access
        // log, the audit record and the phases' spans carry the trace id.
        .layer(TraceLayer::new(
            &runtime.config.tracing,
            runtime.tracer.is_some(),
            // Only the mTLS listener's callers (systems with certificates) may be trusted to
            // start traces; never anonymous browsers on the citizen listener.
            runtime.config.tracing.trust_incoming && listener == Listener::Client,
        ))
        // One access-log line and the request metrics, when the response body ends; the
        // request's spans exported then.
        .layer(AccessLogLayer::new(
            runtime.metrics.clone(),
            runtime.tracer.clone(),
        ))
        // FHIR XML for clients that ask for it: `_format` taken out of the query (everything
        // below, the audit record too, sees the JSON twin), JSON answers (the rescue layer's
        // OperationOutcomes too) written as XML on the way out, two conversions at a time.
        .layer(FormatLayer::new(limits.max_response_bytes))
        // The one place where errors from any layer below become OperationOutcomes.
        .layer(crate::layers::rescue::RescueLayer::new(
            runtime.metrics.clone(),
        ))
        // Framing and target hygiene: smuggling shapes, Host, absolute form, CONNECT (400/405,
        // connection closed).
        .layer(crate::layers::framing::FramingLayer)
        // Health, readiness, metrics and SMART configuration: answered here, before limits,
        // so probes still get through under load and need no token.
        .layer(LocalEndpointsLayer::new(
            runtime.admin.clone(),
            listener,
            page,
        ))
        // Limits: shed (503) rather than queue beyond the concurrency limit ...
        .layer(LoadShedLayer::new())
        .layer(ConcurrencyLimitLayer::new(limits.max_concurrent_requests))
        // ... and bound the body size (413).
        .layer(BodyLimitLayer::new(limits.max_body_bytes))
        // Audit: every request from here in, whatever its fate (a timeout, a client that hangs
        // up), becomes BALP AuditEvents that are durable before the answer leaves (503 if they
        // cannot be written).
        .layer(AuditLayer::new(runtime.auditor.clone()))
        // Bound the whole request in time (504), inside audit so a timeout is recorded too.
        .layer(TimeoutLayer::new(limits.request_timeout))
        // SAML token exchange (`POST /token`) and its key (`/.well-known/jwks.json`): the
        // assertion and the client certificate are the credentials, so before authentication.
        .layer(TokenEndpointLayer::new(token_exchange))
        // Who: a verified token, checked against the client certificate (401 otherwise).
        .layer(AuthenticateLayer::new(
            runtime.verifier.clone(),
            runtime.routes.clone(),
            match listener {
                Listener::Citizen => runtime.audiences.citizen.clone(),
                _ => runtime.audiences.client.clone(),
            },
        ))
        // How often: per-client rate limits (429 with Retry-After beyond them).
        .layer(RateLimitLayer::new(runtime.rate_limiter.clone()))
        // What: the FHIR interaction, resource type, id and parameters (400/404 if unclear);
        // a followed paging link is the request it continues, if it is the caller's (403/410).
        .layer(ClassifyLayer::new(
            runtime.upstreams.clone(),
            runtime.pager.clone(),
            (!runtime.config.operations.is_empty()).then(|| runtime.operations.clone()),
        ))
        // May they: the policy decision (403 otherwise); the decision log and the shadow rules
        // see each decision here.
        .layer(authorize)
        // Header hygiene, forwarding, URL rewriting: the backend.
        .service(match (citizen, citizen_addr) {
            // The citizen listener's answers name the citizen listener, not the mTLS one.
            (Some(c), Some(local)) => Proxy::new(runtime).at_origin(&match &c.public_base_url {
                Some(url) => crate::proxy::origin_of(url),
                None => format!("https://{local}"),
            }),
            _ => Proxy::new(runtime),
        });
    BoxCloneService::new(service)
}
