//! Local endpoints (health, readiness, metrics, SMART configuration, the CapabilityStatement
//! asked for without a token, and on the citizen listener the `/minlog/` page) answered before
//! authentication; everything else goes on down the stack.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::admin::{Admin, Listener};
use crate::body::{Body, BoxError};
use crate::minlog::Page;

/// Serves [`Admin`]'s endpoints.
#[derive(Debug, Clone)]
pub struct LocalEndpointsLayer {
    admin: Arc<Admin>,
    listener: Listener,
    page: Option<Arc<Page>>,
}

impl LocalEndpointsLayer {
    /// Serves `admin`'s endpoints as `listener` offers them, and the citizen `page` if any.
    pub fn new(admin: Arc<Admin>, listener: Listener, page: Option<Arc<Page>>) -> Self {
        Self {
            admin,
            listener,
            page,
        }
    }
}

impl<S> Layer<S> for LocalEndpointsLayer {
    type Service = LocalEndpoints<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LocalEndpoints {
            inner,
            admin: self.admin.clone(),
            listener: self.listener,
            page: self.page.clone(),
        }
    }
}

/// See [`LocalEndpointsLayer`].
#[derive(Debug, Clone)]
pub struct LocalEndpoints<S> {
    inner: S,
    admin: Arc<Admin>,
    listener: Listener,
    page: Option<Arc<Page>>,
}

impl<S> Service<Request<Body>> for LocalEndpoints<S>
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
        if let Some(base) = self.admin.open_metadata(&request, self.listener) {
            // Answered here when the backend's statement can be had; else the usual way.
            let admin = self.admin.clone();
            let mut inner = take_ready(&mut self.inner);
            return Box::pin(async move {
                match admin.capabilities(&base).await {
                    Some(answer) => Ok(answer),
                    None => inner.call(request).await,
                }
            });
        }
        if let Some(endpoint) =
            self.admin
                .route(request.method(), request.uri().path(), self.listener)
        {
            let admin = self.admin.clone();
            return Box::pin(async move { Ok(admin.respond(endpoint).await) });
        }
        if let Some(response) = self
            .page
            .as_ref()
            .and_then(|page| page.serve(request.method(), request.uri().path()))
        {
            return Box::pin(std::future::ready(Ok(response)));
        }
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}
