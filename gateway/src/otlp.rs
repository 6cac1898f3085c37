//! Span export over OTLP/HTTP with the JSON encoding (OpenTelemetry Protocol 1.x,
//! `ExportTraceServiceRequest` at `/v1/traces`), which the OpenTelemetry Collector, Jaeger and
//! Grafana Tempo take. A request's spans (its own, a server span, and its phases) are queued
//! when its answer has gone, and a task sends them in batches (at most [`BATCH`] spans, at least
//! once a second). A full queue or an export that fails drops spans and counts them in
//! `portvagt_trace_spans_dropped_total`: tracing never slows or fails a request.
//!
//! Written here rather than taken from the `opentelemetry` crates: the gateway needs one
//! exporter of one signal, and those crates would bring in a second HTTP stack and protobuf.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::{ConfigError, TracingConfig};
use crate::https::HttpsClient;
use crate::metrics::Metrics;
use crate::trace::{SpanRecord, TraceContext};

/// The most spans one export carries.
const BATCH: usize = 512;
/// How many requests' spans may wait for the exporter.
const QUEUE: usize = 2048;

/// OTLP `SpanKind`.
#[derive(Debug, Clone, Copy)]
pub enum SpanKind {
    /// `SPAN_KIND_INTERNAL`
    Internal = 1,
    /// `SPAN_KIND_SERVER`
    Server = 2,
    /// `SPAN_KIND_CLIENT`
    Client = 3,
}

/// A finished request: its context, its server span's times and attributes, its phases.
#[derive(Debug)]
pub struct FinishedRequest {
    /// The request's context (its span is the server span).
    pub context: TraceContext,
    /// The server span's name, e.g. `GET Patient`.
    pub name: String,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    /// Nanoseconds since the Unix epoch.
    pub end: u64,
    /// HTTP status answered.
    pub status: u16,
    /// `key` → string value attributes of the server span.
    pub attributes: Vec<(&'static str, String)>,
    /// The phases.
    pub phases: Vec<SpanRecord>,
}

/// Queues finished requests for export.
#[derive(Debug)]
pub struct OtlpExporter {
    sender: mpsc::Sender<FinishedRequest>,
    /// The export task's half, until [`OtlpExporter::start`] takes it.
    pending: std::sync::Mutex<Option<(Export, mpsc::Receiver<FinishedRequest>)>>,
    /// Tells the running task to send what waits and end, and the task.
    running: std::sync::Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
    metrics: Arc<Metrics>,
}

impl OtlpExporter {
    /// The exporter for `config`, if it names an endpoint. Nothing is sent until
    /// [`OtlpExporter::start`] (when serving; `check-config` never starts it).
    pub fn new(
        config: &TracingConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<OtlpExporter>, ConfigError> {
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            return Err(ConfigError::new(
                "tracing.sample_ratio",
                "between 0.0 and 1.0",
            ));
        }
        let Some(endpoint) = &config.otlp_endpoint else {
            return Ok(None);
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| ConfigError::new("tracing.otlp_endpoint", format!("not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ConfigError::new(
                "tracing.otlp_endpoint",
                "an http:// or https:// URL, e.g. http://otel-collector:4318/v1/traces",
            ));
        }
        let client = HttpsClient::allowing_plain_http(
            config.otlp_ca_file.as_deref(),
            None,
            Duration::from_secs(10),
        )
        .map_err(|e| ConfigError::new("tracing.otlp_ca_file", e))?;
        let (sender, receiver) = mpsc::channel(QUEUE);
        let export = Export {
            client,
            endpoint: uri,
            resource: json!({ "attributes": [
                attribute("service.name", &config.service_name),
                attribute("service.version", env!("CARGO_PKG_VERSION")),
                // Replicas told apart (a pod's name in Kubernetes).
                attribute(
                    "service.instance.id",
                    &std::env::var("HOSTNAME").unwrap_or_else(|_| uuid::Uuid::new_v4().to_string()),
                ),
            ]}),
            metrics: metrics.clone(),
        };
        Ok(Some(OtlpExporter {
            sender,
            pending: std::sync::Mutex::new(Some((export, receiver))),
            running: std::sync::Mutex::new(None),
            metrics,
        }))
    }

    /// Starts the export task on the current Tokio runtime (once).
    pub fn start(&self) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((export, receiver)) = pending {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(export.run(receiver, stopped));
            *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some((stop, task));
        }
    }

    /// When the gateway stops: sends every span still waiting, within `deadline`.
    pub async fn flush(&self, deadline: Duration) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            if tokio::time::timeout(deadline, task).await.is_err() {
                tracing::warn!("spans still waiting when the gateway stopped were not sent");
            }
        }
    }

    /// Queues one finished request; never waits.
    pub fn export(&self, request: FinishedRequest) {
        let spans = 1 + request.phases.len() as u64;
        if self.sender.try_send(request).is_err() {
            self.metrics.trace_spans_dropped.inc_by(spans);
        }
    }
}

/// The export task's state.
#[derive(Debug)]
struct Export {
    client: HttpsClient,
    endpoint: http::Uri,
    resource: Value,
    metrics: Arc<Metrics>,
}

impl Export {
    /// Gathers spans and sends them: when [`BATCH`] are waiting, or a second after the first.
    /// Until `stopped`: then what waits is sent at once, and the task ends.
    async fn run(
        self,
        mut receiver: mpsc::Receiver<FinishedRequest>,
        mut stopped: tokio::sync::oneshot::Receiver<()>,
    ) {
        loop {
            let first = tokio::select! {
                first = receiver.recv() => first,
                _ = &mut stopped => break,
            };
            let Some(first) = first else { return };
            let mut spans = spans_of(first);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            let mut stopping = false;
            while spans.len() < BATCH {
                tokio::select! {
                    next = tokio::time::timeout_at(deadline, receiver.recv()) => match next {
                        Ok(Some(next)) => spans.extend(spans_of(next)),
                        Ok(None) | Err(_) => break,
                    },
                    _ = &mut stopped, if !stopping => {
                        stopping = true;
                        break;
                    }
                }
            }
            self.send(spans).await;
            if stopping {
                break;
            }
        }
        // Stopping: what is queued goes now, in batches.
        let mut spans = Vec::new();
        while let Ok(next) = receiver.try_recv() {
            spans.extend(spans_of(next));
            if spans.len() >= BATCH {
                self.send(std::mem::take(&mut spans)).await;
            }
        }
        if !spans.is_empty() {
            self.send(spans).await;
        }
    }

    /// One export, sent again (twice at most, after 1 s and 2 s, or the `Retry-After` the
    /// collector asks for, up to 5 s) when the collector is busy or away: 429, 502, 503, 504
    /// or no answer (OTLP/HTTP §Failures). Meanwhile the queue holds what comes.
    async fn send(&self, spans: Vec<Value>) {
        let count = spans.len() as u64;
        let body = Bytes::from(
            json!({ "resourceSpans": [{
                "resource": self.resource,
                "scopeSpans": [{
                    "scope": { "name": "portvagt", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans,
                }],
            }]})
            .to_string(),
        );
        for attempt in 0..3_u64 {
            let request = Request::post(self.endpoint.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::USER_AGENT,
                    concat!("portvagt/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(body.clone()));
            let sent = match request {
                Ok(request) => self.client.send(request).await,
                Err(error) => Err(error.to_string()),
            };
            let wait = match &sent {
                Ok(response) if response.status().is_success() => {
                    // A partial success names the spans it rejected.
                    let rejected = serde_json::from_slice::<Value>(response.body())
                        .ok()
                        .and_then(|answer| {
                            let rejected = &answer["partialSuccess"]["rejectedSpans"];
                            rejected
                                .as_u64()
                                .or_else(|| rejected.as_str()?.parse().ok())
                        })
                        .unwrap_or(0)
                        .min(count);
                    self.metrics.trace_spans_exported.inc_by(count - rejected);
                    self.metrics.trace_spans_dropped.inc_by(rejected);
                    return;
                }
                Ok(response) if matches!(response.status().as_u16(), 429 | 502 | 503 | 504) => {
                    let asked = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    asked.unwrap_or(attempt + 1).min(5)
                }
                Ok(response) => {
                    tracing::warn!(status = %response.status(), "span export refused");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "span export failed");
                    attempt + 1
                }
            };
            if attempt < 2 {
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
        }
        self.metrics.trace_spans_dropped.inc_by(count);
    }
}

/// A request's spans in OTLP JSON: the server span, then its phases.
fn spans_of(request: FinishedRequest) -> Vec<Value> {
    let context = &request.context;
    let trace_id = context.trace_id.hex();
    let mut attributes: Vec<Value> = request
        .attributes
        .iter()
        .map(|(key, value)| attribute(key, value))
        .collect();
    attributes.push(json!({
        "key": "http.response.status_code",
        "value": { "intValue": request.status.to_string() },
    }));
    let mut server = json!({
        "traceId": trace_id,
        "spanId": context.span_id.hex(),
        "name": request.name,
        "kind": SpanKind::Server as u8,
        "startTimeUnixNano": request.start.to_string(),
        "endTimeUnixNano": request.end.to_string(),
        "attributes": attributes,
        // OTel HTTP semantic conventions: a server span fails on 5xx only.
        "status": { "code": if request.status >= 500 { 2 } else { 0 } },
    });
    if let Some(parent) = context.parent {
        server["parentSpanId"] = json!(parent.hex());
    }
    if let Some(state) = context.state.as_ref().and_then(|s| s.to_str().ok()) {
        server["traceState"] = json!(state);
    }
    let mut spans = vec![server];
    for phase in request.phases {
        let kind = if phase.name.starts_with("portvagt.backend") {
            SpanKind::Client
        } else {
            SpanKind::Internal
        };
        let mut span = json!({
            "traceId": trace_id,
            "spanId": phase.span_id.hex(),
            "name": phase.name,
            "kind": kind as u8,
            "startTimeUnixNano": phase.start.to_string(),
            "endTimeUnixNano": phase.end.to_string(),
            "status": { "code": if phase.error { 2 } else { 0 } },
        });
        if let Some(parent) = phase.parent {
            span["parentSpanId"] = json!(parent.hex());
        }
        spans.push(span);
    }
    spans
}

fn attribute(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{SpanId, TraceContext};

    #[test]
    fn a_request_becomes_a_server_span_and_its_phases_in_otlp_json() {
        let context = TraceContext::start(true);
        let phase = SpanRecord {
            span_id: SpanId::random(),
            parent: Some(context.span_id),
            name: "portvagt.backend",
            start: 10,
            end: 20,
            error: false,
        };
        let spans = spans_of(FinishedRequest {
            context: context.clone(),
            name: "GET Patient".into(),
            start: 1,
            end: 30,
            status: 503,
            attributes: vec![("fhir.interaction", "read".into())],
            phases: vec![phase],
        });
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0]["traceId"], context.trace_id.hex());
        assert_eq!(spans[0]["traceId"].as_str().unwrap().len(), 32);
        assert_eq!(spans[0]["kind"], 2);
        assert_eq!(spans[0]["status"]["code"], 2);
        assert_eq!(spans[0]["startTimeUnixNano"], "1");
        assert!(spans[0].get("parentSpanId").is_none());
        assert_eq!(spans[1]["parentSpanId"], context.span_id.hex());
        assert_eq!(spans[1]["kind"], 3);
        assert_eq!(spans[1]["status"]["code"], 0);
        assert!(
            spans[0]["attributes"]
                .to_string()
                .contains("fhir.interaction")
        );
    }

    #[test]
    fn a_bad_endpoint_or_ratio_is_named() {
        let metrics = Arc::new(Metrics::new());
        let config = |endpoint: &str, ratio: f64| TracingConfig {
            otlp_endpoint: Some(endpoint.into()),
            sample_ratio: ratio,
            ..TracingConfig::default()
        };
        let error =
            OtlpExporter::new(&config("ftp://x/v1/traces", 1.0), metrics.clone()).unwrap_err();
        assert_eq!(error.field, "tracing.otlp_endpoint");
        let error =
            OtlpExporter::new(&config("http://x/v1/traces", 1.5), metrics.clone()).unwrap_err();
        assert_eq!(error.field, "tracing.sample_ratio");
        assert!(
            OtlpExporter::new(&config("http://collector:4318/v1/traces", 0.5), metrics)
                .unwrap()
                .is_some()
        );
    }
}
