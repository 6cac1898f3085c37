//! Classification: the path under the FHIR base becomes a [`FhirRequest`] (see
//! `portvagt_policy::request`), together with what else changes a request's meaning: the form
//! body of `POST _search` and the `If-None-Exist` header of a conditional create. Requests
//! outside the FHIR base are not FHIR and get 404.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, header};
use http_body_util::BodyExt as _;
use portvagt_policy::{ClassifyError, FhirRequest, Interaction, classify, parse_form};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::body::{Body, BoxError, full};
use crate::context::record;

/// `If-None-Exist` (FHIR R4 §3.1.0.8.1 conditional create).
static IF_NONE_EXIST: HeaderName = HeaderName::from_static("if-none-exist");

/// What the proxy forwards: the canonical path below the FHIR base (as classified, see
/// [`FhirRequest::path`]) and the raw query.
#[derive(Debug, Clone)]
pub struct FhirPath {
    /// Canonical path relative to the base, without the leading slash (`Patient/1`).
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

/// A `POST _search` whose body is not a form.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a POST _search body must be application/x-www-form-urlencoded")]
pub struct SearchBodyNotForm;

fn is_post_search(request: &Request<Body>, fhir: &FhirRequest) -> bool {
    request.method() == http::Method::POST
        && matches!(
            fhir.interaction(),
            Interaction::SearchType | Interaction::SearchSystem
        )
}

impl<S, R> Service<Request<Body>> for Classify<S>
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
        let classified = relative_path(&self.base_path, request.uri().path())
            .ok_or(ClassifyError::UnknownPath)
            .and_then(|relative| {
                classify(request.method().as_str(), relative, request.uri().query())
            })
            .and_then(|mut fhir| {
                if let Some(value) = request.headers().get(&IF_NONE_EXIST) {
                    let query = value.to_str().map_err(|_| ClassifyError::BadEncoding)?;
                    fhir.set_if_none_exist(query.trim_start_matches('?'))?;
                }
                Ok(fhir)
            });
        let fhir = match classified {
            Ok(fhir) => fhir,
            Err(error) => return Box::pin(std::future::ready(Err(error.into()))),
        };
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            let (request, fhir, query) = if is_post_search(&request, &fhir) {
                canonical_post_search(request, fhir).await?
            } else {
                let query = request.uri().query().map(str::to_owned);
                (request, fhir, query)
            };
            let mut request = request;
            record(&request, |fields| {
                fields.interaction = Some(fhir.interaction());
                fields.resource_type = fhir.resource_type();
            });
            let path = FhirPath {
                relative: fhir.path().to_owned(),
                query,
            };
            request.extensions_mut().insert(Arc::new(fhir));
            request.extensions_mut().insert(path);
            inner.call(request).await
        })
    }
}

/// `POST [type]/_search`: the form body is read (it is already size-limited), its parameters
/// are classified together with the URL's, and ONE canonical form is forwarded: every
/// parameter in the body, none in the URL. Backends differ in whether they read the URL, the
/// body or both; this way each reads exactly what policy saw.
async fn canonical_post_search(
    request: Request<Body>,
    mut fhir: FhirRequest,
) -> Result<(Request<Body>, FhirRequest, Option<String>), BoxError> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let (mut parts, body) = request.into_parts();
    let bytes = body.collect().await?.to_bytes();
    if !is_form && !bytes.is_empty() {
        return Err(SearchBodyNotForm.into());
    }
    let form = std::str::from_utf8(&bytes).map_err(|_| ClassifyError::BadEncoding)?;
    fhir.add_form_params(parse_form(form)?);
    let canonical = match (parts.uri.query(), form.is_empty()) {
        (Some(query), false) => format!("{query}&{form}"),
        (Some(query), true) => query.to_owned(),
        (None, _) => form.to_owned(),
    };
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(canonical.len()));
    Ok((Request::from_parts(parts, full(canonical)), fhir, None))
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
