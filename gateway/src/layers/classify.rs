//! Classification: the path under the FHIR base becomes a [`FhirRequest`] (see
//! `portvagt_policy::request`), together with what else changes a request's meaning: the form
//! body of `POST _search` and the `If-None-Exist` header of a conditional create. Requests
//! outside the FHIR base are not FHIR and get 404. An XML body is read into FHIR JSON here,
//! before anything decides on it, and forwarded as that JSON.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use http_body_util::BodyExt as _;
use portvagt_policy::operations::{Kind, Operations};
use portvagt_policy::request::operation_parameters;
use portvagt_policy::{ClassifyError, FhirRequest, Interaction, classify, parse_form};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::auth::Principal;
use crate::backend::identity::ForwardedBody;
use crate::body::{Body, BoxError, empty, full};
use crate::context::record;
use crate::paging::{LinkKind, PAGE_SEGMENT, PageFollow, PageLinkError, Pager};
use crate::routing::{FhirPath, SharedRoutes};
use crate::trace::{Phase, Traced};

/// `If-None-Exist` (FHIR R4 §3.1.0.8.1 conditional create).
static IF_NONE_EXIST: HeaderName = HeaderName::from_static("if-none-exist");

/// Classifies FHIR requests below the gateway's FHIR bases (those of the routes in force).
#[derive(Debug, Clone)]
pub struct ClassifyLayer {
    routes: SharedRoutes,
    pager: Arc<Pager>,
    operations: Option<Arc<Operations>>,
}

impl ClassifyLayer {
    /// FHIR lives below each route's base (e.g. `/fhir` and `/fhir/regionh`); a request
    /// belongs to the longest that contains it. A paging link (`<base>/_page/<token>`) opened
    /// with `pager` is classified as the request it continues. `operations`, when the operator
    /// declared any, say what each operation is instead of the built-in table.
    pub fn new(
        routes: SharedRoutes,
        pager: Arc<Pager>,
        operations: Option<Arc<Operations>>,
    ) -> Self {
        Self {
            routes,
            pager,
            operations,
        }
    }
}

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Classify {
            inner,
            routes: self.routes.clone(),
            pager: self.pager.clone(),
            operations: self.operations.clone(),
        }
    }
}

/// See [`ClassifyLayer`].
#[derive(Debug, Clone)]
pub struct Classify<S> {
    inner: S,
    routes: SharedRoutes,
    pager: Arc<Pager>,
    operations: Option<Arc<Operations>>,
}

/// A paging link followed: opened for the caller (with `GET` or `HEAD`; `DELETE` only to
/// cancel a Bulk Data export), and the request it continues classified as the client first
/// made it.
fn follow_page(
    pager: &Pager,
    request: &Request<Body>,
    base: &str,
    token: &str,
) -> Result<(FhirRequest, PageFollow), BoxError> {
    let method = request.method();
    let reads = method == http::Method::GET || method == http::Method::HEAD;
    if !reads && method != http::Method::DELETE {
        return Err(PageLinkError::Method.into());
    }
    if request.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(PageLinkError::Parameters.into());
    }
    let holder = request
        .extensions()
        .get::<Arc<Principal>>()
        .map(|principal| principal.fingerprint())
        .ok_or(PageLinkError::NotYours)?;
    let follow = pager.open(token, base, &holder)?;
    let origin = &follow.origin;
    let fhir = if origin.post_search {
        let mut fhir = classify("POST", &origin.relative, None)?;
        fhir.add_form_params(parse_form(origin.query.as_deref().unwrap_or(""))?)?;
        fhir
    } else {
        classify("GET", &origin.relative, origin.query.as_deref())?
    };
    // `DELETE` cancels a Bulk Data export (its status link); nothing else is deleted this way.
    let cancels =
        follow.kind == LinkKind::ExportStatus && fhir.operation_kind() == Some(Kind::Export);
    if !(reads || cancels) {
        return Err(PageLinkError::Method.into());
    }
    Ok((fhir, follow))
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
pub struct SearchBodyNotFormError;

fn is_post_search(method: &http::Method, fhir: &FhirRequest) -> bool {
    method == http::Method::POST
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
        // Ends once the request is classified (its body read, if decided on); a refusal drops
        // it, recorded as failed.
        let phase = Phase::start(request.extensions().get::<Traced>(), "portvagt.classify");
        let routes = self.routes.load();
        let located = routes
            .iter()
            .filter_map(|route| {
                let base = route.base_path.as_str();
                Some((base, relative_path(base, request.uri().path())?))
            })
            .max_by_key(|(base, _)| base.len())
            .map(|(base, relative)| (base.to_owned(), relative));
        let base = located
            .as_ref()
            .map(|(base, _)| base.clone())
            .unwrap_or_default();
        let relative = located.map(|(_, relative)| relative);
        let page_token = relative.and_then(|r| r.strip_prefix(PAGE_SEGMENT)?.strip_prefix('/'));
        let classified = match page_token {
            Some(token) => follow_page(&self.pager, &request, &base, token)
                .map(|(fhir, follow)| (fhir, Some(follow))),
            None => relative
                .ok_or(ClassifyError::UnknownPath)
                .and_then(|relative| {
                    classify(request.method().as_str(), relative, request.uri().query())
                })
                .and_then(|mut fhir| {
                    if let Some(value) = request.headers().get(&IF_NONE_EXIST) {
                        let query = value.to_str().map_err(|_| ClassifyError::BadEncoding)?;
                        fhir.set_if_none_exist(query.trim_start_matches('?'))?;
                    }
                    Ok((fhir, None))
                })
                .map_err(BoxError::from),
        };
        let (mut fhir, follow) = match classified {
            Ok(classified) => classified,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        let mut inner = take_ready(&mut self.inner);
        let operations = self.operations.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let mut forwarded = FhirPath {
                base,
                relative: fhir.path().to_owned(),
                query: match &follow {
                    Some(follow) => follow.origin.query.clone(),
                    None => parts.uri.query().map(str::to_owned),
                },
                form: None,
            };
            // A followed link: what is sent is the backend's link, without any body, and what
            // is recorded is the request it continues.
            let continues = follow.as_ref().map(|follow| {
                let origin = &follow.origin;
                match &origin.query {
                    Some(query) if !query.is_empty() => {
                        format!("{}/{}?{query}", origin.base, origin.relative)
                    }
                    _ => format!("{}/{}", origin.base, origin.relative),
                }
            });
            let followed = follow.is_some();
            if let Some(follow) = follow {
                parts.extensions.insert(follow);
            }
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = if followed {
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::CONTENT_TYPE);
                empty()
            } else if is_post_search(&parts.method, &fhir) {
                forwarded.form = Some(
                    canonical_search_form(
                        &mut fhir,
                        forwarded.query.take(),
                        content_type.as_deref(),
                        body,
                    )
                    .await?,
                );
                parts.headers.remove(header::CONTENT_LENGTH);
                empty()
            } else if fhir.needs_body() {
                // Writes, patches and bundles are decided on their content: read it (the body
                // limit already bounds it) and forward the very bytes that were decided on.
                let mut bytes = body.collect().await?.to_bytes();
                let mut content_type = content_type;
                if content_type.as_deref().is_some_and(crate::format::is_xml) {
                    bytes = json_twin(bytes, &mut parts.headers).await?;
                    content_type = Some(FHIR_JSON_TYPE.to_owned());
                }
                fhir.attach_body(content_type.as_deref(), &bytes)?;
                parts.extensions.insert(ForwardedBody(bytes.clone()));
                full(bytes)
            } else if parts.method == http::Method::POST
                && fhir.interaction() == Interaction::Operation
            {
                // An operation's body parameters are decided on like its query's: a form, or a
                // Parameters resource (XML read into its JSON twin, which is what goes on).
                let mut bytes = body.collect().await?.to_bytes();
                let media = content_type.as_deref().unwrap_or("");
                let params = if bytes.is_empty() {
                    Vec::new()
                } else if is_form(Some(media)) {
                    let form =
                        std::str::from_utf8(&bytes).map_err(|_| ClassifyError::BadEncoding)?;
                    parse_form(form)?
                } else if crate::format::is_xml(media) || crate::format::is_json(media) {
                    if crate::format::is_xml(media) {
                        bytes = json_twin(bytes, &mut parts.headers).await?;
                    }
                    operation_parameters(&bytes)?
                } else {
                    return Err(ClassifyError::UnsupportedFormat.into());
                };
                fhir.add_form_params(params)?;
                parts.extensions.insert(ForwardedBody(bytes.clone()));
                full(bytes)
            } else if content_type.as_deref().is_some_and(crate::format::is_xml) {
                // An XML body on an interaction that takes none (a read) would reach the backend
                // unread and unconverted: only an empty one goes on.
                let bytes = body.collect().await?.to_bytes();
                if !bytes.is_empty() {
                    return Err(portvagt_fhir::XmlError::NotFhirXml(
                        "this interaction takes no body".to_owned(),
                    )
                    .into());
                }
                empty()
            } else {
                body
            };
            // The operator's operations decide what an operation is, in a batch entry too.
            if let Some(operations) = &operations {
                fhir.apply_operations(operations);
            }
            let mut request = Request::from_parts(parts, body);
            let fhir = Arc::new(fhir);
            record(&request, |fields| {
                fields.interaction = Some(fhir.interaction());
                fields.resource_type = fhir.resource_type();
                fields.request = Some(fhir.clone());
                fields.continues = continues;
            });
            request.extensions_mut().insert(fhir);
            request.extensions_mut().insert(forwarded);
            phase.end(false);
            inner.call(request).await
        })
    }
}

/// The media type of what the gateway forwards in place of an XML body.
const FHIR_JSON_TYPE: &str = "application/fhir+json";

/// Whether a `Content-Type` is a form (`application/x-www-form-urlencoded`).
fn is_form(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// An XML body read into its JSON twin (`portvagt_fhir`), which is what policy decides on and
/// what the backend gets, with `headers` saying so: the two cannot be judged apart.
async fn json_twin(xml: Bytes, headers: &mut HeaderMap) -> Result<Bytes, BoxError> {
    let json: Bytes = crate::format::convert(move || portvagt_fhir::xml_to_json(&xml))
        .await??
        .into();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(FHIR_JSON_TYPE),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
    Ok(json)
}

/// `POST [type]/_search`: the form body is read (it is already size-limited), its parameters
/// are classified together with the URL's, and ONE canonical form is forwarded: every
/// parameter in the body, none in the URL. Backends differ in whether they read the URL, the
/// body or both; this way each reads exactly what policy saw.
async fn canonical_search_form(
    fhir: &mut FhirRequest,
    query: Option<String>,
    content_type: Option<&str>,
    body: Body,
) -> Result<String, BoxError> {
    let bytes = body.collect().await?.to_bytes();
    if !is_form(content_type) && !bytes.is_empty() {
        return Err(SearchBodyNotFormError.into());
    }
    let form = std::str::from_utf8(&bytes).map_err(|_| ClassifyError::BadEncoding)?;
    fhir.add_form_params(parse_form(form)?)?;
    Ok(match (query, form.is_empty()) {
        (Some(query), false) => format!("{query}&{form}"),
        (Some(query), true) => query,
        (None, _) => form.to_owned(),
    })
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
