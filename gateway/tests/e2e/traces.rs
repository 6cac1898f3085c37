//! Traces: a trusted client's W3C `traceparent` is continued, an untrusted one's never; the
//! backend gets the gateway's trace and nothing else of the client's (the reference backend
//! says what it received at `/_testbed/traces/<id>`); the access log and the AuditEvent carry
//! the trace id; and the request's spans, one per phase, reach an OTLP/HTTP receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::support::{Answer, Gateway, Options, request};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
/// The trace an untrusted client names (another, as the tests share one backend).
const UNTRUSTED_TRACE: &str = "5cf92f3577b34da6a3ce929d0e0e4737";

/// A small OTLP/HTTP receiver: every JSON body POSTed to it, kept.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let kept = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let is_json = request.headers()["content-type"] == "application/json";
                            let body = request.into_body().collect().await?.to_bytes();
                            if is_json && let Ok(value) = serde_json::from_slice(&body) {
                                kept.lock().unwrap().push(value);
                            }
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from("{}"))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (url, received)
}

/// A gateway exporting to `otlp`; it enforces consent, so it reads Consents on a request's
/// behalf.
fn gateway(otlp: &str, trust: bool) -> Gateway {
    Gateway::start_with(Options {
        extra_config: format!(
            "[consent]\n\n[tracing]\ntrust_incoming = {trust}\notlp_endpoint = \"{otlp}\"\nservice_name = \"portvagt-test\"\n"
        ),
        ..Options::default()
    })
}

async fn traced_read(gateway: &Gateway, token: Option<&str>, trace: &str) -> Answer {
    let mut read = request(Method::GET, "/fhir/Patient/pat-anne", token, None);
    let headers = read.headers_mut();
    headers.insert(
        "traceparent",
        format!("00-{trace}-{PARENT}-01").parse().unwrap(),
    );
    headers.insert("tracestate", "vendor=opaque".parse().unwrap());
    headers.insert("baggage", "user=someone-else".parse().unwrap());
    headers.insert("x-b3-traceid", trace.parse().unwrap());
    gateway.client().send(read).await.unwrap()
}

/// The spans received for `trace`, once there are at least `count`.
async fn spans_of(received: &Mutex<Vec<Value>>, trace: &str, count: usize) -> Vec<Value> {
    let mut spans = Vec::new();
    for _ in 0..60 {
        spans = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|body| {
                body["resourceSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|resource| {
                resource["scopeSpans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|scope| scope["spans"].as_array().cloned().unwrap_or_default())
            .filter(|span| span["traceId"] == trace)
            .collect();
        if spans.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    spans
}

/// What the reference backend received of the trace `trace`, if a request named it.
async fn seen_by_backend(trace: &str) -> Option<Value> {
    let base = crate::support::backend_url();
    let origin = &base[..base[8..].find('/').map_or(base.len(), |at| at + 8)];
    let (status, seen) = crate::support::backend_exchange(
        origin,
        Method::GET,
        &format!("_testbed/traces/{trace}"),
        None,
    )
    .await;
    (status == 200).then_some(seen)
}

/// The trace id the access log gives the request `answer` answered.
fn logged_trace(gateway: &Gateway, answer: &Answer) -> String {
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    gateway
        .access_log()
        .into_iter()
        .find(|line| line["request_id"] == request_id)
        .and_then(|line| line["trace_id"].as_str().map(str::to_owned))
        .expect("an access log line with a trace id")
}

#[tokio::test]
async fn a_trusted_trace_is_continued_to_the_backend_logged_audited_and_exported() {
    let (otlp, received) = receiver().await;
    let gateway = gateway(&otlp, true);
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = traced_read(&gateway, Some(&token), TRACE).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    // The backend was told the trace, by the gateway's call, and nothing else of the client's.
    let seen = seen_by_backend(TRACE)
        .await
        .expect("the trace reached the backend");
    let traceparent = seen["traceparent"].as_str().unwrap();
    assert!(traceparent.starts_with(&format!("00-{TRACE}-")), "{seen}");
    assert!(
        !traceparent.contains(PARENT),
        "the gateway's span is the parent: {seen}"
    );
    assert_eq!(seen["tracestate"], "vendor=opaque");
    assert_eq!(seen["baggage"], Value::Null);
    assert!(answer.headers.get("traceresponse").is_none());
    let request_id = answer.headers["x-request-id"].to_str().unwrap().to_owned();

    let phases = [
        "portvagt.tls",
        "portvagt.authenticate",
        "portvagt.classify",
        "portvagt.decide",
        "portvagt.consent",
        "portvagt.backend",
        "portvagt.audit",
    ];
    let spans = spans_of(&received, TRACE, phases.len() + 1).await;
    let server = spans
        .iter()
        .find(|span| span["kind"] == 2)
        .unwrap_or_else(|| panic!("no server span: {spans:#?}"));
    assert_eq!(server["parentSpanId"], PARENT);
    assert_eq!(server["traceState"], "vendor=opaque");
    assert_eq!(server["name"], "GET Patient");
    assert!(server["attributes"].to_string().contains(&request_id));
    for phase in phases {
        let span = spans
            .iter()
            .find(|span| span["name"] == phase)
            .unwrap_or_else(|| panic!("no {phase} span: {spans:#?}"));
        assert_eq!(span["parentSpanId"], server["spanId"], "{phase}");
        assert_eq!(span["status"]["code"], 0, "{phase}");
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start <= end, "{phase}");
    }
    let backend = spans
        .iter()
        .find(|span| span["name"] == "portvagt.backend")
        .unwrap();
    assert_eq!(backend["kind"], 3);
    // The gateway's own read of the patient's Consents, for this request, in its trace.
    let lookup = spans
        .iter()
        .find(|span| span["name"] == "portvagt.backend.lookup")
        .unwrap_or_else(|| panic!("no lookup span: {spans:#?}"));
    assert_eq!(lookup["kind"], 3);
    assert_eq!(lookup["parentSpanId"], server["spanId"]);
    let resource = received.lock().unwrap()[0]["resourceSpans"][0]["resource"].clone();
    assert!(resource.to_string().contains("portvagt-test"), "{resource}");

    // The access log and the audit record name the trace.
    let logged = gateway
        .access_log()
        .into_iter()
        .find(|line| line["request_id"] == request_id.as_str())
        .expect("an access log line");
    assert_eq!(logged["trace_id"], TRACE);
    let events = gateway.audit_events_for(&request_id);
    assert!(!events.is_empty());
    assert!(events.iter().all(|event| {
        event["entity"].as_array().unwrap().iter().any(|entity| {
            entity["type"]["code"] == "trace-id" && entity["what"]["identifier"]["value"] == TRACE
        })
    }));

    // A refused request is traced too: its authentication failed.
    let refused = traced_read(&gateway, Some("not-a-token"), TRACE).await;
    assert_eq!(refused.status, 401);
    let spans = spans_of(&received, TRACE, spans.len() + 3).await;
    assert!(
        spans
            .iter()
            .any(|span| { span["name"] == "portvagt.authenticate" && span["status"]["code"] == 2 }),
        "{spans:#?}"
    );
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    assert!(
        crate::support::metric_value(&metrics, "portvagt_trace_spans_exported_total")
            .is_some_and(|exported| exported >= 8.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_spans_still_waiting_are_sent_when_the_gateway_stops() {
    let (otlp, received) = receiver().await;
    let mut gateway = gateway(&otlp, true);
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    const STOPPING: &str = "6df92f3577b34da6a3ce929d0e0e4738";
    assert_eq!(
        traced_read(&gateway, Some(&token), STOPPING).await.status,
        200
    );
    // At once, inside the exporter's one-second batch window.
    assert!(gateway.terminate().success());
    let spans = spans_of(&received, STOPPING, 2).await;
    assert!(
        spans.iter().any(|span| span["kind"] == 2),
        "the last request's spans were lost at the stop: {spans:#?}"
    );
}

#[tokio::test]
async fn an_untrusted_clients_trace_is_not_continued_nor_passed_on() {
    let (otlp, received) = receiver().await;
    let gateway = gateway(&otlp, false);
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = traced_read(&gateway, Some(&token), UNTRUSTED_TRACE).await;
    assert_eq!(answer.status, 200);
    assert!(
        seen_by_backend(UNTRUSTED_TRACE).await.is_none(),
        "the client's trace reached the backend"
    );
    let own = logged_trace(&gateway, &answer);
    assert_eq!(own.len(), 32);
    let seen = seen_by_backend(&own)
        .await
        .expect("the gateway's trace reached the backend");
    assert_eq!(seen["tracestate"], Value::Null);
    assert_eq!(seen["baggage"], Value::Null);
    let spans = spans_of(&received, &own, 2).await;
    let server = spans.iter().find(|span| span["kind"] == 2).unwrap();
    assert!(server.get("parentSpanId").is_none(), "{server}");
    assert!(server.get("traceState").is_none(), "{server}");
    assert!(spans_of(&received, UNTRUSTED_TRACE, 1).await.is_empty());
}
