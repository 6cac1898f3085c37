//! `portvagt-audit-sink PORT`: an audit repository for long load runs. It takes the transaction
//! Bundles Portvagt's shipper POSTs, answers each entry `201 Created`, and keeps nothing, so a
//! soak can ship (and delete shipped spool segments) without a FHIR server's disk and CPU in
//! the measurement. Counts what it took on standard error when it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    entry: Vec<IgnoredAny>,
}

async fn answer(
    request: http::Request<Incoming>,
    taken: Arc<AtomicU64>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    // It keeps nothing: whatever the shipper looks up (its start check reads the last record
    // it shipped and the anchor) is not there, which a fresh spool's check accepts.
    if request.method() == http::Method::GET {
        return Ok(status(
            StatusCode::NOT_FOUND,
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}"#,
        ));
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST, "")),
    };
    let Ok(transaction) = serde_json::from_slice::<Transaction>(&body) else {
        return Ok(status(StatusCode::BAD_REQUEST, ""));
    };
    let count = transaction.entry.len();
    taken.fetch_add(count as u64, Ordering::Relaxed);
    let mut out = String::with_capacity(40 + count * 40);
    out.push_str(r#"{"resourceType":"Bundle","type":"transaction-response","entry":["#);
    for n in 0..count {
        if n > 0 {
            out.push(',');
        }
        out.push_str(r#"{"response":{"status":"201 Created"}}"#);
    }
    out.push_str("]}");
    Ok(status(StatusCode::OK, &out))
}

fn status(code: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    response
}

fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: portvagt-audit-sink PORT"))?
        .parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let taken = Arc::new(AtomicU64::new(0));
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    let taken = taken.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| answer(request, taken.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("audit sink: took {} events", taken.load(Ordering::Relaxed));
        anyhow::Ok(())
    })
}
