//! `POST /token` (SAML token exchange) and `GET /.well-known/jwks.json` (the key that signs
//! what it issues), answered here when `[token_exchange]` is configured. It sits inside the
//! limits (so the body is bounded and the work counted) and outside authentication: the
//! assertion and the client certificate are the credentials here, not a token.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Response, header};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::body::{Body, BoxError, full};
use crate::exchange::TokenExchange;

/// Where the endpoints are.
const TOKEN_PATH: &str = "/token";
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Serves the token endpoint of `exchange`, if there is one.
#[derive(Debug, Clone)]
pub struct TokenEndpointLayer {
    exchange: Option<Arc<TokenExchange>>,
}

impl TokenEndpointLayer {
    /// Serves `exchange`'s endpoints; with `None` every request passes through.
    pub fn new(exchange: Option<Arc<TokenExchange>>) -> Self {
        Self { exchange }
    }
}

impl<S> Layer<S> for TokenEndpointLayer {
    type Service = TokenEndpoint<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TokenEndpoint {
            inner,
            exchange: self.exchange.clone(),
        }
    }
}

/// See [`TokenEndpointLayer`].
#[derive(Debug, Clone)]
pub struct TokenEndpoint<S> {
    inner: S,
    exchange: Option<Arc<TokenExchange>>,
}

impl<S> Service<Request<Body>> for TokenEndpoint<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(exchange) = &self.exchange {
            let path = request.uri().path();
            if path == TOKEN_PATH {
                let exchange = exchange.clone();
                return Box::pin(async move { exchange.handle(request).await });
            }
            if path == JWKS_PATH && matches!(*request.method(), Method::GET | Method::HEAD) {
                let mut response = Response::new(full(exchange.jwks()));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                );
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                return Box::pin(async move { Ok(response) });
            }
        }
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}
