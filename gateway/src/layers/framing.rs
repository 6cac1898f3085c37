//! Request framing and target hygiene (RFC 9112), before anything else looks at a request.
//!
//! hyper already refuses what cannot be parsed (obs-fold, duplicate or invalid
//! `Content-Length`, transfer codings other than a final `chunked`, NUL and other bytes that
//! are not allowed in a request line or header). A request with both `Content-Length` and
//! `Transfer-Encoding` (the classic smuggling shape) it reads by `Transfer-Encoding` alone and
//! answers with the connection closed (RFC 9112 §6.1), so whatever follows is never read as a
//! request; and the request to the backend is framed anew. What hyper lets through and a
//! security gateway refuses here:
//!
//! - An HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2: MUST be 400).
//! - The absolute form of the request target on HTTP/1.1 (`GET https://elsewhere/...`): it is
//!   for forward proxies; an origin's clients never send it, so one that does is confused or
//!   probing for a proxy. 400.
//! - `CONNECT` and `TRACE`: a FHIR gateway tunnels nothing and echoes nothing. 405.
//!
//! Every refusal here closes the connection after the answer: what came after a request whose
//! framing is in doubt is not read as another request.

use std::task::{Context, Poll};

use http::{Method, Request, StatusCode, Version, header};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::body::{Body, BoxError};

/// The detail codes of [`FramingError`]; the rescue layer closes the connection after them.
pub const CLOSE_AFTER: [&str; 3] = ["bad-host", "absolute-form", "method-not-allowed"];

/// A request refused for its framing or target.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{message}")]
pub struct FramingError {
    /// One of [`CLOSE_AFTER`].
    pub code: &'static str,
    /// 400 or 405.
    pub status: StatusCode,
    /// What to fix.
    pub message: &'static str,
}

/// Why `request` must be refused, if it must.
pub fn check<B>(request: &Request<B>) -> Result<(), FramingError> {
    let headers = request.headers();
    if matches!(*request.method(), Method::CONNECT | Method::TRACE) {
        return Err(FramingError {
            code: "method-not-allowed",
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "CONNECT and TRACE are not served",
        });
    }
    if request.version() == Version::HTTP_11 {
        if headers.get_all(header::HOST).iter().count() != 1 {
            return Err(FramingError {
                code: "bad-host",
                status: StatusCode::BAD_REQUEST,
                message: "an HTTP/1.1 request needs exactly one Host header",
            });
        }
        if request.uri().scheme().is_some() {
            return Err(FramingError {
                code: "absolute-form",
                status: StatusCode::BAD_REQUEST,
                message: "send the request target as a path (origin form), not a full URL",
            });
        }
    }
    Ok(())
}

/// Refuses what [`check`] refuses.
#[derive(Debug, Clone, Copy, Default)]
pub struct FramingLayer;

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Framing { inner }
    }
}

/// See [`FramingLayer`].
#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
}

impl<S, R> Service<Request<Body>> for Framing<S>
where
    S: Service<Request<Body>, Response = R, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFuture<Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Err(refused) = check(&request) {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        method: Method,
        uri: &str,
        version: Version,
        headers: &[(&str, &str)],
    ) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri).version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn what_is_refused_and_what_is_not() {
        let h11 = Version::HTTP_11;
        let host = ("host", "fhir.example");
        let code = |r: &Request<()>| check(r).err().map(|e| e.code);
        assert_eq!(
            code(&request(Method::GET, "/fhir/Patient", h11, &[host])),
            None
        );
        assert_eq!(
            code(&request(Method::GET, "/fhir/Patient", h11, &[])),
            Some("bad-host")
        );
        assert_eq!(
            code(&request(
                Method::GET,
                "/fhir/Patient",
                h11,
                &[host, ("host", "evil.example")]
            )),
            Some("bad-host")
        );
        assert_eq!(
            code(&request(
                Method::GET,
                "https://evil.example/fhir/Patient",
                h11,
                &[host]
            )),
            Some("absolute-form")
        );
        assert_eq!(
            code(&request(Method::CONNECT, "evil.example:443", h11, &[host])),
            Some("method-not-allowed")
        );
        assert_eq!(
            code(&request(Method::TRACE, "/fhir", h11, &[host])),
            Some("method-not-allowed")
        );
        // HTTP/2 requests always carry an absolute URI (`:scheme`, `:authority`) and no Host.
        assert_eq!(
            code(&request(
                Method::GET,
                "https://fhir.example/fhir/Patient",
                Version::HTTP_2,
                &[]
            )),
            None
        );
        // HTTP/1.0 predates Host.
        assert_eq!(
            code(&request(
                Method::GET,
                "/fhir/Patient",
                Version::HTTP_10,
                &[]
            )),
            None
        );
    }
}
