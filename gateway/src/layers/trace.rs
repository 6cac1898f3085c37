//! W3C Trace Context for each request ([`crate::trace`]): continued from a trusted client's
//! `traceparent`, or started; the client's trace headers taken off the request (the backend
//! gets the gateway's own, naming its call); the TLS handshake of a connection's first request
//! recorded as a span. Placed right after the request id, so the access log and the audit
//! record see the trace id.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::config::TracingConfig;
use crate::trace::{SpanId, SpanRecord, Spans, TRACEPARENT, TRACESTATE, TraceContext, Traced};

/// When and how long a connection's TLS handshake took (nanoseconds since the Unix epoch), on
/// the connection's first request.
#[derive(Debug, Clone, Copy)]
pub struct TlsHandshake {
    /// Began.
    pub start: u64,
    /// Ended.
    pub end: u64,
}

/// Puts a [`Traced`] on every request.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    trust_incoming: bool,
    sample_ratio: f64,
    exporting: bool,
}

impl TraceLayer {
    /// `exporting`: an OTLP exporter is configured (otherwise nothing is recorded, and the
    /// backend is told nothing is sampled); `trust`: continue the caller's trace.
    pub fn new(config: &TracingConfig, exporting: bool, trust: bool) -> Self {
        Self {
            settings: Arc::new(Settings {
                trust_incoming: trust,
                sample_ratio: config.sample_ratio,
                exporting,
            }),
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// See [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    settings: Arc<Settings>,
}

/// Trace and correlation headers of the tracing systems in use (W3C, its baggage, Zipkin B3,
/// Jaeger, Datadog, Sentry, AWS X-Ray), as a client sends them.
const CLIENT_TRACE_HEADERS: &[&str] = &[
    TRACEPARENT,
    TRACESTATE,
    "traceresponse",
    "baggage",
    "b3",
    "uber-trace-id",
    "sentry-trace",
    "x-amzn-trace-id",
    "x-cloud-trace-context",
];
const CLIENT_TRACE_PREFIXES: &[&str] = &["x-b3-", "x-datadog-", "uberctx-", "ot-tracer-"];

fn strip_client_trace_headers(headers: &mut http::HeaderMap) {
    for name in CLIENT_TRACE_HEADERS {
        headers.remove(*name);
    }
    let prefixed: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| {
            CLIENT_TRACE_PREFIXES
                .iter()
                .any(|prefix| name.as_str().starts_with(prefix))
        })
        .cloned()
        .collect();
    for name in prefixed {
        headers.remove(name);
    }
}

/// Whether a new trace is sampled, at `ratio`.
fn sampled(ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut byte = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    f64::from(u32::from_le_bytes(byte)) / f64::from(u32::MAX) < ratio
}

impl<S, B, RB> Service<Request<B>> for TraceService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let settings = &self.settings;
        let context = TraceContext::of(
            request.headers(),
            settings.trust_incoming,
            settings.exporting && sampled(settings.sample_ratio),
        );
        // The backend gets the gateway's own trace headers, never a client's, of any tracing
        // system.
        strip_client_trace_headers(request.headers_mut());
        let recording = settings.exporting && context.sampled;
        let traced = Traced {
            recording,
            context,
            spans: if recording {
                Spans::default()
            } else {
                Spans::none()
            },
        };
        if traced.recording
            && let Some(handshake) = request.extensions_mut().remove::<TlsHandshake>()
        {
            traced.spans.push(SpanRecord {
                span_id: SpanId::random(),
                parent: Some(traced.context.span_id),
                name: "portvagt.tls",
                start: handshake.start,
                end: handshake.end,
                error: false,
            });
        }
        request.extensions_mut().insert(traced);
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}
