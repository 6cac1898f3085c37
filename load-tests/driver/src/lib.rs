//! A load generator for Portvagt's load tests. It does what `wrk` and `h2load` cannot (present
//! a client certificate) and what `oha` does not do by default (open-loop fixed rates with
//! latency measured from the scheduled send time, so a stall is not hidden by the requests
//! that were never sent during it: coordinated omission). Connections are kept alive; HTTP/1.1
//! or HTTP/2; any headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Serialize;

/// What to load and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The URL every request goes to (`http://` or `https://`).
    pub url: Uri,
    /// Extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Open connections (each sends one request at a time on HTTP/1.1).
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Requests per second over all connections; `None`: as fast as answers come.
    pub rate: Option<f64>,
    /// HTTP/2 instead of HTTP/1.1 (over TLS by ALPN).
    pub http2: bool,
    /// TLS: trusted CA (PEM), and a client certificate chain and key (PEM).
    pub tls: Option<TlsPlan>,
    /// A mix of requests taken in turn over all connections (each connection the n-th of
    /// every `connections`): a path and query on `url`'s origin, and headers of its own (a
    /// caller's token). Empty: every request is `url` with `headers`.
    pub mix: std::sync::Arc<Vec<Variant>>,
}

/// One request of a mix.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Path and query, e.g. `/fhir/Patient/p7`.
    pub path: String,
    /// Headers added to (or replacing) the plan's.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// TLS settings.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub ca_pem: String,
    pub client: Option<(String, String)>,
}

/// What came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// The first few error descriptions.
    pub error_samples: Vec<String>,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Answered requests per second.
    pub requests_per_second: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

type Sender = SendRequest;

enum SendRequest {
    One(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    Two(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(plan: &Plan, tls: Option<&Arc<rustls::ClientConfig>>) -> anyhow::Result<Sender> {
    let host = plan.url.host().unwrap_or("127.0.0.1").to_owned();
    let https = plan.url.scheme_str() == Some("https");
    let port = plan.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    macro_rules! handshake {
        ($io:expr) => {
            if plan.http2 {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), $io).await?;
                tokio::spawn(connection);
                SendRequest::Two(sender)
            } else {
                let (sender, connection) = hyper::client::conn::http1::handshake($io).await?;
                tokio::spawn(connection);
                SendRequest::One(sender)
            }
        };
    }
    Ok(match (https, tls) {
        (true, Some(config)) => {
            let name = ServerName::try_from(host)?;
            let stream = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await?;
            handshake!(TokioIo::new(stream))
        }
        _ => handshake!(TokioIo::new(tcp)),
    })
}

fn tls_config(plan: &TlsPlan, http2: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(plan.ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match &plan.client {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// Per-connection tallies.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    samples: Vec<String>,
    latencies_us: Vec<u32>,
}

/// Runs `plan` and reports.
pub async fn run(plan: Plan) -> anyhow::Result<Outcome> {
    let tls = plan
        .tls
        .as_ref()
        .map(|tls| tls_config(tls, plan.http2))
        .transpose()?;
    let plan = Arc::new(plan);
    let started = Instant::now();
    let deadline = started + plan.duration;
    // At a fixed rate each connection takes every n-th slot of one schedule.
    let interval = plan
        .rate
        .map(|rate| Duration::from_secs_f64(plan.connections as f64 / rate.max(1.0)));
    let mut tasks = Vec::new();
    for index in 0..plan.connections {
        let plan = plan.clone();
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut sender = match connect(&plan, tls.as_ref()).await {
                Ok(sender) => sender,
                Err(error) => {
                    tally.errors += 1;
                    tally.samples.push(format!("connect: {error}"));
                    return tally;
                }
            };
            let offset = interval.map(|i| i.mul_f64(index as f64 / plan.connections as f64));
            let mut next = started + offset.unwrap_or_default();
            // This connection's turns in the mix: index, index + connections, ...
            let mut turn = index;
            loop {
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                // Latency counts from when the request was due, not from when it went out.
                let due = if interval.is_some() {
                    next
                } else {
                    Instant::now()
                };
                if due >= deadline {
                    break;
                }
                let request = request_for(&plan, turn);
                turn = turn.wrapping_add(plan.connections);
                let answer = match &mut sender {
                    SendRequest::One(sender) => match sender.ready().await {
                        Ok(()) => sender.send_request(request).await,
                        Err(error) => Err(error),
                    },
                    SendRequest::Two(sender) => match sender.ready().await {
                        Ok(()) => sender.send_request(request).await,
                        Err(error) => Err(error),
                    },
                };
                let ok = match answer {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.into_body().collect().await;
                        match body {
                            Ok(_) if status.is_success() => true,
                            Ok(_) => {
                                if tally.samples.len() < 5 {
                                    tally.samples.push(format!("status {status}"));
                                }
                                false
                            }
                            Err(error) => {
                                if tally.samples.len() < 5 {
                                    tally.samples.push(format!("body: {error}"));
                                }
                                false
                            }
                        }
                    }
                    Err(error) => {
                        if tally.samples.len() < 5 {
                            tally.samples.push(format!("request: {error}"));
                        }
                        // The connection is gone: open another.
                        match connect(&plan, tls.as_ref()).await {
                            Ok(fresh) => sender = fresh,
                            Err(_) => {
                                tally.errors += 1;
                                break;
                            }
                        }
                        false
                    }
                };
                let latency = due.elapsed();
                if ok {
                    tally.ok += 1;
                    tally
                        .latencies_us
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                } else {
                    tally.errors += 1;
                }
                if let Some(interval) = interval {
                    next += interval;
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await?;
        total.ok += tally.ok;
        total.errors += tally.errors;
        for sample in tally.samples {
            if total.samples.len() < 10 {
                total.samples.push(sample);
            }
        }
        total.latencies_us.extend(tally.latencies_us);
    }
    let seconds = started.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let percentile = |p: f64| -> u64 {
        if total.latencies_us.is_empty() {
            return 0;
        }
        let index = ((total.latencies_us.len() as f64 * p).ceil() as usize)
            .clamp(1, total.latencies_us.len());
        u64::from(total.latencies_us[index - 1])
    };
    Ok(Outcome {
        ok: total.ok,
        errors: total.errors,
        error_samples: total.samples,
        seconds,
        requests_per_second: total.ok as f64 / seconds.max(f64::EPSILON),
        p50_us: percentile(0.50),
        p99_us: percentile(0.99),
        p999_us: percentile(0.999),
        max_us: total.latencies_us.last().copied().map_or(0, u64::from),
    })
}

/// The GET request of `plan` for its `turn` (which request of the mix), with its headers.
fn request_for(plan: &Plan, turn: usize) -> Request<Empty<Bytes>> {
    let variant = (!plan.mix.is_empty()).then(|| &plan.mix[turn % plan.mix.len()]);
    let path = variant.map_or_else(
        || plan.url.path_and_query().map_or("/", |p| p.as_str()),
        |variant| variant.path.as_str(),
    );
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = if plan.http2 {
        let origin = format!(
            "{}://{}",
            plan.url.scheme_str().unwrap_or("https"),
            plan.url.authority().map_or("", |a| a.as_str())
        );
        format!("{origin}{path}").parse().unwrap_or_default()
    } else {
        path.parse().unwrap_or_default()
    };
    if !plan.http2
        && let Some(authority) = plan.url.authority()
        && let Ok(value) = HeaderValue::try_from(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    for (name, value) in plan
        .headers
        .iter()
        .chain(variant.into_iter().flat_map(|v| v.headers.iter()))
    {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    request
}

/// What came of holding idle connections.
#[derive(Debug, Clone, Serialize)]
pub struct IdleOutcome {
    /// Connections opened, each with one request answered 2xx, then held idle.
    pub held: u64,
    /// Connections that could not be opened or whose request failed.
    pub failed: u64,
    pub error_samples: Vec<String>,
}

/// Opens `plan.connections` connections (handshake and one answered request each, so the
/// server holds a warm connection, not a half-open socket), then calls `ready` and keeps them
/// all open and idle for `hold`.
pub async fn hold_idle(
    plan: Plan,
    hold: Duration,
    ready: impl FnOnce(u64),
) -> anyhow::Result<IdleOutcome> {
    let tls = plan
        .tls
        .as_ref()
        .map(|tls| tls_config(tls, plan.http2))
        .transpose()?;
    let mut outcome = IdleOutcome {
        held: 0,
        failed: 0,
        error_samples: Vec::new(),
    };
    let mut held = Vec::with_capacity(plan.connections);
    // In batches, so the server's accept queue is not the thing measured.
    for batch in 0..plan.connections.div_ceil(50) {
        let count = (plan.connections - batch * 50).min(50);
        let opened = futures_util::future::join_all((0..count).map(|_| async {
            let mut sender = connect(&plan, tls.as_ref()).await?;
            let answer = match &mut sender {
                SendRequest::One(s) => {
                    s.ready().await?;
                    s.send_request(request_for(&plan, 0)).await?
                }
                SendRequest::Two(s) => {
                    s.ready().await?;
                    s.send_request(request_for(&plan, 0)).await?
                }
            };
            let status = answer.status();
            answer.into_body().collect().await?;
            anyhow::ensure!(status.is_success(), "status {status}");
            Ok(sender)
        }))
        .await;
        for connection in opened {
            match connection {
                Ok(sender) => {
                    outcome.held += 1;
                    held.push(sender);
                }
                Err(error) => {
                    outcome.failed += 1;
                    if outcome.error_samples.len() < 5 {
                        outcome.error_samples.push(format!("{error:#}"));
                    }
                }
            }
        }
    }
    ready(outcome.held);
    tokio::time::sleep(hold).await;
    drop(held);
    Ok(outcome)
}
