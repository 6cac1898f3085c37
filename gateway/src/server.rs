//! The accept loops: TLS (rustls) with a required client certificate, then HTTP/1.1 or HTTP/2
//! (ALPN, hyper-util auto) into the stack; the optional citizen listener (TLS without client
//! certificates, into the citizen stack); and the optional plain-HTTP admin listener.
//! Shutdown is graceful: stop accepting, let in-flight requests finish within the grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::admin::Listener;
use crate::body::{Body, boxed};
use crate::context::ClientAddr;
use crate::layers::trace::TlsHandshake;
use crate::outcome::Outcome;
use crate::runtime::Runtime;
use crate::stack::{self, GatewayService};
use crate::tls::{PeerIdentity, handshake_failure_reason};

/// The sockets the gateway serves on.
#[derive(Debug)]
pub struct Listeners {
    /// The mTLS client listener (`server.listen`).
    pub client: TcpListener,
    /// The plain-HTTP admin listener (`server.admin_listen`).
    pub admin: Option<TcpListener>,
    /// The citizen listener (`citizen.listen`).
    pub citizen: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener `config` names (`client` already bound, its port perhaps chosen
    /// by the system).
    pub async fn bind(
        client: TcpListener,
        config: &crate::config::Config,
    ) -> Result<Listeners, (String, std::io::Error)> {
        let admin = match config.server.admin_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| (format!("server.admin_listen: cannot bind {addr}"), e))?,
            ),
            None => None,
        };
        let citizen = match &config.citizen {
            Some(citizen) => Some(
                TcpListener::bind(citizen.listen)
                    .await
                    .map_err(|e| (format!("citizen.listen: cannot bind {}", citizen.listen), e))?,
            ),
            None => None,
        };
        Ok(Listeners {
            client,
            admin,
            citizen,
        })
    }
}

/// Serves until `shutdown` resolves, then drains for at most `server.shutdown_grace`.
pub async fn serve(
    runtime: Arc<Runtime>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) {
    let Listeners {
        client: listener,
        admin: admin_listener,
        citizen: citizen_listener,
    } = listeners;
    let service = stack::build(&runtime);
    // Remote issuer keys: fetched once now (failures are logged; an unknown `kid` retries), then
    // kept fresh in the background.
    for remote in runtime.verifier.remote_sources() {
        let _ = remote.refresh().await;
        tokio::spawn(remote.refresh_periodically());
    }
    if let Some(auditor) = &runtime.auditor {
        auditor.start_shipping();
    }
    // Blocks made on other replicas: their patients' cached Consents forgotten as announced.
    if let Some(consent) = &runtime.consent {
        consent.start_listening();
    }
    // Certificates, keys and policy: reloaded on SIGHUP and when their files change.
    tokio::spawn(crate::reload::watch(runtime.clone()));
    let http = Arc::new(http_builder(&runtime));
    let graceful = GracefulShutdown::new();
    let admin_task =
        admin_listener.map(|listener| tokio::spawn(serve_admin(runtime.clone(), listener)));
    // The citizen listener: its own stack and TLS configuration, the same drain.
    let citizen = match (citizen_listener, &runtime.citizen_tls) {
        (Some(listener), Some(tls)) => {
            let local = listener
                .local_addr()
                .unwrap_or(runtime.config.server.listen);
            Some((listener, tls.clone(), stack::build_citizen(&runtime, local)))
        }
        _ => None,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let connection = Connection {
                    runtime: runtime.clone(),
                    // The TLS configuration of this moment: a reload changes it for new
                    // connections only.
                    acceptor: TlsAcceptor::from(runtime.tls.load_full()),
                    http: http.clone(),
                    service: service.clone(),
                    watcher: graceful.watcher(),
                    citizen: false,
                };
                tokio::spawn(connection.run(stream, addr));
            }
            accepted = accept_if_any(citizen.as_ref().map(|(listener, _, _)| listener)) => {
                let (Ok((stream, addr)), Some((_, tls, service))) = (accepted, &citizen) else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let connection = Connection {
                    runtime: runtime.clone(),
                    acceptor: TlsAcceptor::from(tls.load_full()),
                    http: http.clone(),
                    service: service.clone(),
                    watcher: graceful.watcher(),
                    citizen: true,
                };
                tokio::spawn(connection.run(stream, addr));
            }
        }
    }
    drop(listener);
    drop(citizen);
    tracing::info!(
        in_flight_connections = graceful.count(),
        "shutting down: draining"
    );
    let grace = runtime.config.server.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_seconds = grace.as_secs_f64(),
            "grace period over: closing remaining connections"
        );
    }
    if let Some(task) = admin_task {
        task.abort();
    }
    // Every answer is out: the audit chain ends with a clean close, and the spans still
    // waiting are sent (briefly: a collector that is away does not hold up the stop).
    if let Some(auditor) = &runtime.auditor {
        auditor.close().await;
    }
    if let Some(tracer) = &runtime.tracer {
        tracer.flush(std::time::Duration::from_secs(2)).await;
    }
    tracing::info!("stopped");
}

/// The next connection on `listener`; never, when there is none.
async fn accept_if_any(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn http_builder(runtime: &Runtime) -> auto::Builder<TokioExecutor> {
    let limits = &runtime.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Slow clients (slowloris) must send their headers within this time.
        .header_read_timeout(runtime.config.server.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(Some(64))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

struct Connection {
    runtime: Arc<Runtime>,
    acceptor: TlsAcceptor,
    http: Arc<auto::Builder<TokioExecutor>>,
    service: GatewayService,
    watcher: hyper_util::server::graceful::Watcher,
    /// The citizen listener: no client certificate is asked for.
    citizen: bool,
}

impl Connection {
    async fn run(self, stream: TcpStream, addr: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let timeout = self.runtime.config.server.handshake_timeout;
        let handshake_start = crate::trace::now_nanos();
        let tls = match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                let reason = handshake_failure_reason(&error);
                self.runtime
                    .metrics
                    .tls_handshake_failures
                    .with_label_values(&[reason])
                    .inc();
                tracing::info!(client = %addr, reason, "TLS handshake refused");
                return;
            }
            Err(_) => {
                self.runtime
                    .metrics
                    .tls_handshake_failures
                    .with_label_values(&["timeout"])
                    .inc();
                return;
            }
        };
        // rustls verified the chain; the leaf is the first certificate. On the citizen
        // listener none is asked for: an identity that no token can be bound to.
        let peer = if self.citizen {
            Some(PeerIdentity::without_certificate())
        } else {
            tls.get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| PeerIdentity::from_verified_leaf(leaf))
        };
        let Some(peer) = peer.map(Arc::new) else {
            self.runtime
                .metrics
                .tls_handshake_failures
                .with_label_values(&["no-client-certificate"])
                .inc();
            return;
        };
        let handshake = std::sync::Mutex::new(Some(TlsHandshake {
            start: handshake_start,
            end: crate::trace::now_nanos(),
        }));
        let service = self.service;
        let per_request = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer.clone());
            request.extensions_mut().insert(ClientAddr(addr));
            // The handshake is the first request's: later ones on the connection paid none.
            if let Some(handshake) = handshake.lock().unwrap_or_else(|p| p.into_inner()).take() {
                request.extensions_mut().insert(handshake);
            }
            let call = service.clone().oneshot(request.map(boxed));
            async move {
                // Rescue answers every error inside the stack; this is the last line of defence.
                Ok::<_, Infallible>(call.await.unwrap_or_else(|error| {
                    crate::layers::rescue::rescue(&*error)
                        .outcome
                        .into_response(None)
                }))
            }
        });
        let connection = self.http.serve_connection(TokioIo::new(tls), per_request);
        if let Err(error) = self.watcher.watch(connection.into_owned()).await {
            tracing::debug!(client = %addr, %error, "connection ended with an error");
        }
    }
}

/// The plain-HTTP admin listener: `/healthz`, `/readyz`, `/metrics`, nothing else.
async fn serve_admin(runtime: Arc<Runtime>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admin = runtime.admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let admin = admin.clone();
                async move {
                    let response: Response<Body> = match admin.route(
                        request.method(),
                        request.uri().path(),
                        Listener::Admin,
                    ) {
                        Some(endpoint) => admin.respond(endpoint).await,
                        None => Outcome::new(
                            http::StatusCode::NOT_FOUND,
                            "not-found",
                            "unknown-path",
                            "not an admin endpoint",
                        )
                        .into_response(None),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Registers for SIGTERM and SIGINT (Ctrl-C) at once, so that a signal from this moment on
/// stops the server cleanly (a signal before the server runs is not lost to the default
/// action, which would end the process without closing the audit trail); the future resolves
/// on the first.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let (mut terminate, mut interrupt) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let terminate = async {
                match &mut terminate {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let interrupt = async {
                match &mut interrupt {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = terminate => {},
                () = interrupt => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received");
    }
}
