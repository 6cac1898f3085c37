//! Classification: the path under the FHIR base becomes a [`FhirRequest`] (see
//! `portvagt_policy::request`). Requests outside the FHIR base are not FHIR and get 404.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use portvagt_policy::{ClassifyError, FhirRequest, classify};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::body::BoxError;
use crate::context::record;

/// The raw path below the FHIR base and the raw query, as the proxy forwards them.
#[derive(Debug, Clone)]
pub struct FhirPath {
    /// Path relative to the base, without the leading slash (`Patient/1`).
    pub relative: String,
    /// The raw query string, if any.
    pub query: Option<String>,
}

/// Classifies FHIR requests below `base_path`.
#[derive(Debug, Clone)]
pub struct ClassifyLayer {
    base_path: Arc<str>,
}

impl ClassifyLayer {
    /// FHIR lives below `base_path` (e.g. `/fhir`).
    pub fn new(base_path: &str) -> Self {
        Self {
            base_path: base_path.trim_end_matches('/').into(),
        }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            base_path: self.base_path.clone(),
        }
    }
}

/// See [`ClassifyLayer`].
#[derive(Debug, Clone)]
pub struct Classify<S> {
    inner: S,
    base_path: Arc<str>,
}

fn relative_path<'a>(base: &str, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/')
    }
}

impl<S, B, R> Service<Request<B>> for Classify<S>
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
        let classified = relative_path(&self.base_path, request.uri().path())
            .ok_or(ClassifyError::UnknownPath)
            .and_then(|relative| {
                let fhir = classify(request.method().as_str(), relative, request.uri().query())?;
                Ok((
                    fhir,
                    FhirPath {
                        relative: relative.to_owned(),
                        query: request.uri().query().map(str::to_owned),
                    },
                ))
            });
        let (fhir, path) = match classified {
            Ok(classified) => classified,
            Err(error) => return Box::pin(std::future::ready(Err(error.into()))),
        };
        record(&request, |fields| {
            fields.interaction = Some(fhir.interaction());
            fields.resource_type = fhir.resource_type();
        });
        request
            .extensions_mut()
            .insert(Arc::new(fhir as FhirRequest));
        request.extensions_mut().insert(path);
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_below_the_base_are_fhir() {
        assert_eq!(relative_path("/fhir", "/fhir"), Some(""));
        assert_eq!(relative_path("/fhir", "/fhir/"), Some(""));
        assert_eq!(relative_path("/fhir", "/fhir/Patient/1"), Some("Patient/1"));
        assert_eq!(relative_path("/fhir", "/fhirPatient"), None);
        assert_eq!(relative_path("/fhir", "/other/Patient"), None);
        assert_eq!(relative_path("", "/Patient"), Some("Patient"));
    }
}
