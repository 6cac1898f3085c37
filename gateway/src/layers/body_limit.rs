//! Request body limit: a declared `Content-Length` over the limit is refused at once (413), and
//! every body is wrapped so that a streamed one cannot exceed it either.

use std::task::{Context, Poll};

use http::{Request, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::body::{Body, BodyTooLargeError, BoxError, ClientBodyError, boxed};

/// Limits request bodies to `max_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    max_bytes: u64,
}

impl BodyLimitLayer {
    /// A limit of `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// See [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    max_bytes: u64,
}

impl<S, R> Service<Request<Body>> for BodyLimit<S>
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
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_bytes) {
            return Box::pin(std::future::ready(Err(BodyTooLargeError.into())));
        }
        let limit = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let request = request.map(|body| {
            boxed(Limited::new(body, limit).map_err(|error| {
                if error.is::<LengthLimitError>() {
                    error
                } else {
                    Box::new(ClientBodyError(error)) as BoxError
                }
            }))
        });
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}
