//! Authentication: the bearer token (RFC 6750 §2.1) verified against the connection's client
//! certificate; the resulting [`Principal`] goes into the request extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, header};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::auth::{AuthnError, Principal, TokenVerifier};
use crate::body::BoxError;
use crate::context::record;
use crate::tls::PeerIdentity;

/// Requires a valid access token.
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    verifier: Arc<TokenVerifier>,
}

impl AuthenticateLayer {
    /// Verifies tokens with `verifier`.
    pub fn new(verifier: Arc<TokenVerifier>) -> Self {
        Self { verifier }
    }
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
        }
    }
}

/// See [`AuthenticateLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
}

/// The token from `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_token<B>(request: &Request<B>) -> Result<&str, AuthnError> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthnError::MissingToken)?;
    if values.next().is_some() {
        // Which one a backend would read is anyone's guess: refuse.
        return Err(AuthnError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthnError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::MissingToken);
    }
    let token = token.trim();
    if token.is_empty() {
        Err(AuthnError::MissingToken)
    } else {
        Ok(token)
    }
}

impl<S, B, R> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = R, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFuture<Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let verifier = self.verifier.clone();
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            let peer = request
                .extensions()
                .get::<Arc<PeerIdentity>>()
                .cloned()
                .ok_or(AuthnError::NoClientCertificate)?;
            let token = bearer_token(&request)?.to_owned();
            // Known keys verify without waiting; only an unknown `kid` may wait for a refresh.
            let principal: Principal = verifier.verify(&token, &peer).await?;
            record(&request, |fields| {
                fields.principal = Some(principal.subject().to_owned());
                fields.client_id = principal.client_id().map(str::to_owned);
            });
            request.extensions_mut().insert(Arc::new(principal));
            inner.call(request).await
        })
    }
}
