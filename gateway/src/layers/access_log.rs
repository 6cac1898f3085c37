//! One JSON access-log line and the request metrics per request, written when the response
//! body ends (or is dropped), so bytes and total latency are the real ones.
//!
//! The line carries the request id, the client certificate subject, the principal, the
//! interaction, resource type, decision and reason, status, bytes, and upstream and total
//! latency. Never a token, never a query string (queries can hold CPR numbers), and so never a
//! paging link's token either (it carries the query it continues).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{BoxFuture, take_ready};
use crate::body::{Body, BoxError};
use crate::context::RequestRecord;
use crate::metrics::{Metrics, status_class};
use crate::otlp::{FinishedRequest, OtlpExporter};
use crate::tls::PeerIdentity;
use crate::trace::Traced;

/// Writes the access log and request metrics.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    metrics: Arc<Metrics>,
    tracer: Option<Arc<OtlpExporter>>,
}

impl AccessLogLayer {
    /// A layer recording into `metrics`, and handing a request's spans to `tracer`.
    pub fn new(metrics: Arc<Metrics>, tracer: Option<Arc<OtlpExporter>>) -> Self {
        Self { metrics, tracer }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            metrics: self.metrics.clone(),
            tracer: self.tracer.clone(),
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
    metrics: Arc<Metrics>,
    tracer: Option<Arc<OtlpExporter>>,
}

impl<S> Service<Request<Body>> for AccessLog<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let record = RequestRecord::default();
        request.extensions_mut().insert(record.clone());
        let traced = request.extensions().get::<Traced>().cloned();
        let entry = Entry {
            started: Instant::now(),
            started_at: crate::trace::now_nanos(),
            tracer: self
                .tracer
                .clone()
                .filter(|_| traced.as_ref().is_some_and(|t| t.recording)),
            traced,
            method: request.method().to_string(),
            path: logged_path(request.uri().path()),
            request_id: request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.as_str().to_owned()),
            peer: request.extensions().get::<Arc<PeerIdentity>>().cloned(),
            record,
            metrics: self.metrics.clone(),
            // Until a response exists, the client is the one who went away (nginx's 499).
            status: 499,
            bytes: 0,
        };
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            // `entry` writes its line when dropped: at the end of the response body, on an
            // error, or when the client goes away and this future is dropped mid-request.
            let mut entry = entry;
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(error) => {
                    entry.status = 500;
                    tracing::error!(error = %error, "unrescued error reached the access log");
                    return Err(error);
                }
            };
            entry.status = response.status().as_u16();
            Ok(response.map(|body| {
                crate::body::boxed(LoggedBody {
                    inner: body,
                    entry: Some(entry),
                })
            }))
        })
    }
}

struct Entry {
    started: Instant,
    /// Nanoseconds since the Unix epoch, for the server span.
    started_at: u64,
    traced: Option<Traced>,
    /// Where the request's spans go, when they are recorded.
    tracer: Option<Arc<OtlpExporter>>,
    method: String,
    path: String,
    request_id: Option<String>,
    peer: Option<Arc<PeerIdentity>>,
    record: RequestRecord,
    metrics: Arc<Metrics>,
    status: u16,
    bytes: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.write();
    }
}

impl Entry {
    fn write(&self) {
        let elapsed = self.started.elapsed();
        let fields = self.record.fields().clone();
        let interaction = fields.interaction.map_or("none", |i| i.as_str());
        let resource_type = fields.resource_type.map_or("none", |t| t.as_str());
        let class = status_class(self.status);
        self.metrics
            .requests
            .with_label_values(&[interaction, resource_type, class])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[interaction, class])
            .observe(elapsed.as_secs_f64());
        let trace_id = self
            .traced
            .as_ref()
            .map(|traced| traced.context.trace_id.hex());
        tracing::info!(
            target: "portvagt::access",
            request_id = self.request_id.as_deref().unwrap_or(""),
            trace_id = trace_id.as_deref().unwrap_or(""),
            method = %self.method,
            path = %self.path,
            client_subject = self.peer.as_ref().map_or("", |p| p.subject()),
            client_cvr = self.peer.as_ref().and_then(|p| p.cvr()).unwrap_or(""),
            principal = fields.principal.as_deref().unwrap_or(""),
            client_id = fields.client_id.as_deref().unwrap_or(""),
            interaction,
            resource_type,
            decision = fields.decision.unwrap_or(""),
            reason = fields.reason.unwrap_or(""),
            status = self.status,
            upstream_status = fields.upstream_status.unwrap_or(0),
            bytes = self.bytes,
            upstream_latency_ms = fields.upstream_latency.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "access"
        );
        // Probes are not worth a trace.
        let probe = matches!(self.path.as_str(), "/healthz" | "/readyz" | "/metrics");
        if let (Some(tracer), Some(traced), false) = (&self.tracer, &self.traced, probe) {
            // The method as HTTP names it, else `_OTHER` (OTel's convention): a client cannot
            // make up span names. No path: resource ids stay in the access log.
            let method = match self.method.as_str() {
                known @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => known,
                _ => "_OTHER",
            };
            let mut attributes = vec![
                ("http.request.method", method.to_owned()),
                ("fhir.interaction", interaction.to_owned()),
                ("fhir.resource_type", resource_type.to_owned()),
                (
                    "portvagt.decision",
                    fields.decision.unwrap_or("").to_owned(),
                ),
            ];
            if let Some(reason) = fields.reason {
                attributes.push(("portvagt.reason", reason.to_owned()));
            }
            if let Some(id) = &self.request_id {
                attributes.push(("portvagt.request_id", id.clone()));
            }
            tracer.export(FinishedRequest {
                context: traced.context.clone(),
                name: match fields.resource_type {
                    Some(resource_type) => format!("{method} {}", resource_type.as_str()),
                    None if self.path == "/token" => format!("{method} /token"),
                    None => method.to_owned(),
                },
                start: self.started_at,
                end: crate::trace::now_nanos(),
                status: self.status,
                attributes,
                phases: traced.spans.take(),
            });
        }
    }
}

/// The response body, counting bytes; writes the log line at its end or drop.
struct LoggedBody {
    inner: Body,
    entry: Option<Entry>,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(entry)) = (frame.data_ref(), self.entry.as_mut()) {
                    entry.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                // Dropping the entry writes the line.
                self.entry = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The path as logged: a signed paging link's token (`.../_page/<token>`) left out, since it
/// carries the query of the search it continues.
fn logged_path(path: &str) -> String {
    let marker = format!("/{}/", crate::paging::PAGE_SEGMENT);
    match path.find(&marker) {
        Some(at) => format!("{}…", &path[..at + marker.len()]),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::logged_path;

    #[test]
    fn a_paging_links_token_is_not_logged() {
        assert_eq!(
            logged_path("/fhir/Patient/pat-anne"),
            "/fhir/Patient/pat-anne"
        );
        assert_eq!(
            logged_path("/fhir/_page/eyJvIjp7InEiOiJpZGVudGlmaWVyPTAxMDE5MCJ9fQ.c2ln"),
            "/fhir/_page/…"
        );
        assert_eq!(
            logged_path("/fhir/regionh/_page/x.y"),
            "/fhir/regionh/_page/…"
        );
    }
}
