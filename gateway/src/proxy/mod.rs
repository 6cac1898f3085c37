//! The proxy: sends an authorised request to the backend FHIR server over a pooled hyper
//! client and prepares the answer for the client (header hygiene, URL rewriting).
//!
//! The request path and query are forwarded byte for byte as the classifier saw them, below the
//! backend's base path. Bundles (search, history) are buffered up to a limit to rewrite their
//! URLs; other responses stream through. Backend failures never reach the client as they are:
//! a 5xx becomes the gateway's own 502 (or 503), so stack traces and backend versions stay inside.

mod bundle;
mod citizen_block;
mod consent;
mod export;
pub mod headers;
mod request;
mod response;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use portvagt_policy::compartment::{Identified, Membership, membership};
use portvagt_policy::{FhirRequest, FilterMode, Obligations, ResponseCheck};
use tower::Service;

pub use self::citizen_block::CitizenBlockError;
use crate::backend::rewrite::{FoundPatients, Paging, UrlRewriter};
pub use crate::backend::{Backend, Fetched, ProxyError};
use crate::body::{Body, BoxError, full};
use crate::config::FilteredEntries;
use crate::consent::ConsentStore;
use crate::context::{EntryRecord, RequestRecord};
use crate::encoding::form_encode;
use crate::layers::BoxFuture;
use crate::mass_lookup::MassLookupGuard;
use crate::metrics::Metrics;
use crate::paging::{LinkKind, PAGE_SEGMENT, PageOrigin, Pager};
use crate::relationship::Relationships;
use crate::routing::SharedRoutes;
use crate::runtime::Runtime;
use crate::smart::SmartDocuments;
use portvagt_policy::request::RequestBody;

/// The innermost service: forwards to the backend. One `Arc`: every layer above clones the
/// service it wraps for each request it takes.
#[derive(Debug, Clone)]
pub struct Proxy(Arc<ProxyState>);

impl std::ops::Deref for Proxy {
    type Target = ProxyState;

    fn deref(&self) -> &ProxyState {
        &self.0
    }
}

/// What the proxy holds: built once per runtime, shared by every request.
#[derive(Debug, Clone)]
pub struct ProxyState {
    backend: Arc<Backend>,
    public_host: Option<HeaderValue>,
    /// The gateway's public base URL: the `iss` of the identity assertions it signs.
    public_base_url: Arc<str>,
    /// On a listener clients reach at another origin (the citizen listener): the main
    /// listener's origin and this one's, swapped in the URLs of answers.
    origin: Option<Arc<(String, String)>>,
    max_response_bytes: usize,
    filter_mode: FilterMode,
    metrics: Arc<Metrics>,
    smart: Arc<SmartDocuments>,
    /// The audit trail needs to know whose data each answer holds.
    audited: bool,
    /// The most patients one answer may be about (`[audit] max_patients_per_request`).
    audit_bound: usize,
    /// Citizens' blocks, when enforced.
    consent: Option<Arc<ConsentStore>>,
    /// The treatment relationship professionals need, when checked.
    relationships: Option<Arc<Relationships>>,
    /// The mass-lookup guard, when configured.
    mass_lookup: Option<Arc<MassLookupGuard>>,
    /// Where requests go, most specific first.
    routes: SharedRoutes,
    /// Signs the paging links handed out, and the proxy sends the backend's own link when one
    /// is followed.
    pager: Arc<Pager>,
    /// The fewest letters or digits a break-the-glass reason holds to count.
    min_reason: usize,
    /// Patients placed by identifier a moment ago.
    identifier_cache: Arc<consent::IdentifierCache>,
    /// One change of a citizen's blocks at a time.
    block_locks: Arc<citizen_block::BlockLocks>,
    /// Citizens block (`[citizen] blocks`): no other write may change their blocks.
    guards_blocks: bool,
}

/// A backend and the rewriter for the URLs in its answers.
#[derive(Debug, Clone)]
struct Upstream {
    backend: Arc<Backend>,
    rewriter: Arc<UrlRewriter>,
    /// Where the Patients are: the backend the routes send `Patient` to under the request's
    /// base. Patients named by identifier are looked up there, whichever backend holds what
    /// names them.
    patients: Arc<Backend>,
}

impl Proxy {
    /// The proxy to the runtime's backend, whose clients see its public base URL.
    pub fn new(runtime: &Runtime) -> Self {
        let public_base_url = &runtime.public_base_url;
        let public_host = public_base_url.parse::<Uri>().ok().and_then(|uri| {
            uri.authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
        });
        Self(Arc::new(ProxyState {
            backend: runtime.backend.clone(),
            public_host,
            public_base_url: Arc::from(public_base_url.as_str()),
            origin: None,
            max_response_bytes: usize::try_from(runtime.config.limits.max_response_bytes)
                .unwrap_or(usize::MAX),
            filter_mode: match runtime.config.policy.filtered_entries {
                FilteredEntries::Remove => FilterMode::Remove,
                FilteredEntries::Deny => FilterMode::Deny,
            },
            metrics: runtime.metrics.clone(),
            smart: runtime.smart.clone(),
            audited: runtime.auditor.is_some(),
            audit_bound: runtime
                .auditor
                .as_ref()
                .map_or(usize::MAX, |auditor| auditor.max_patients_per_request()),
            consent: runtime.consent.clone(),
            relationships: runtime.relationships.clone(),
            mass_lookup: runtime.mass_lookup.clone(),
            routes: runtime.upstreams.clone(),
            pager: runtime.pager.clone(),
            min_reason: runtime.config.policy.break_glass_min_reason,
            identifier_cache: Arc::default(),
            block_locks: Arc::default(),
            guards_blocks: runtime
                .config
                .citizen
                .as_ref()
                .is_some_and(|citizen| citizen.blocks),
        }))
    }
}

impl Proxy {
    /// The same proxy for a listener clients reach at `origin` (`https://host:port`): the
    /// links, `fullUrl`s and `Location`s of its answers name it.
    pub fn at_origin(self, origin: &str) -> Self {
        let main = origin_of(&self.public_base_url);
        Self(Arc::new(ProxyState {
            origin: Some(Arc::new((main, origin.trim_end_matches('/').to_owned()))),
            ..(*self.0).clone()
        }))
    }
}

impl Proxy {
    /// The route that takes `resource_type` under `base` (`None`: a request of no one type),
    /// its answers' URLs as clients of this listener reach them.
    fn upstream_for(&self, base: &str, resource_type: Option<&str>) -> Option<Upstream> {
        let routes = self.routes.load();
        let route = routes
            .iter()
            .find(|route| route.takes(base, resource_type))?;
        Some(Upstream {
            backend: route.backend.clone(),
            rewriter: match &self.origin {
                Some(origin) => Arc::new(route.rewriter.with_origin(&origin.0, &origin.1)),
                None => route.rewriter.clone(),
            },
            patients: self.backend_taking(base, "Patient"),
        })
    }

    /// The backend the routes send `resource_type` to under `base`, or the main one (where the
    /// gateway's own reads of Patients and Consents go when no route names them).
    fn backend_taking(&self, base: &str, resource_type: &str) -> Arc<Backend> {
        self.routes
            .load()
            .iter()
            .find(|route| route.takes(base, Some(resource_type)))
            .map_or_else(|| self.backend.clone(), |route| route.backend.clone())
    }
}

/// `https://host:port` of a URL (what precedes its path).
pub(crate) fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(path) => url[..after_scheme + path].to_owned(),
        None => url.to_owned(),
    }
}

impl Service<Request<Body>> for Proxy {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let this = self.clone();
        // The gateway's own reads for this request (Consents, a write's target) are part of its
        // trace too.
        let traced = request.extensions().get::<crate::trace::Traced>().cloned();
        Box::pin(async move { crate::trace::within(traced, this.forward(request)).await })
    }
}

/// What answers under `obligations` must satisfy, if anything.
pub(crate) fn response_check(obligations: &Obligations) -> Option<ResponseCheck<'_>> {
    (obligations.compartment.is_some()
        || !obligations.restriction.is_empty()
        || obligations.withhold_audit_events)
        .then(|| ResponseCheck {
            compartment: obligations.compartment.as_deref(),
            restriction: &obligations.restriction,
            // The proxy reads the target first whenever the obligation says so.
            instance_verified: obligations.verify_target,
            withhold_audit_events: obligations.withhold_audit_events,
        })
}

/// Why an answer that failed its [`response_check`] is refused.
pub(crate) fn refusal_reason(obligations: &Obligations) -> portvagt_policy::DenyReason {
    use portvagt_policy::DenyReason;
    if obligations.compartment.is_some() {
        DenyReason::OutsideCompartment
    } else if !obligations.restriction.is_empty() {
        DenyReason::OutsideGranularScope
    } else {
        DenyReason::AuditLogRestricted
    }
}

/// A FHIR JSON answer the gateway makes itself.
fn fhir_json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::outcome::FHIR_JSON),
    );
    response
}

/// Appends `params`, form-encoded, to a query string or a form body.
fn append_params(existing: &str, params: &[(String, String)]) -> String {
    let mut out = existing.to_owned();
    for (name, value) in params {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&form_encode(name));
        out.push('=');
        out.push_str(&form_encode(value));
    }
    out
}

/// `existing` (a query or form) with its `_elements` widened: every `_elements` pair replaced
/// by one naming what the client `asked` for and what the gateway `added`
/// ([`portvagt_policy::elements`]).
fn widen_elements(existing: &str, asked: &[&str], added: &[String]) -> String {
    let kept: Vec<&str> = existing
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            crate::encoding::form_decode(pair.as_bytes())
                .and_then(|pairs| pairs.into_iter().next())
                .is_none_or(|(name, _)| name != "_elements")
        })
        .collect();
    let elements: Vec<&str> = asked
        .iter()
        .copied()
        .chain(added.iter().map(String::as_str))
        .collect();
    append_params(
        &kept.join("&"),
        &[("_elements".to_owned(), elements.join(","))],
    )
}

/// Appends `params` to an entry URL (`Type?query` or `Type`).
pub(crate) fn with_params(url: &str, params: &[(String, String)]) -> String {
    match url.split_once('?') {
        Some((path, query)) => format!("{path}?{}", append_params(query, params)),
        None => format!("{url}?{}", append_params("", params)),
    }
}

impl Proxy {
    /// The request phase ([`Proxy::prepare`]: route, narrow, check consent and the target, plan a
    /// batch), the exchange with the backend ([`Proxy::send`]), and the response phase
    /// ([`Proxy::respond`]: check, merge, withhold, rewrite, record whose data left).
    async fn forward(self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        // A citizen's own block is answered here: nothing she sent is forwarded.
        let block_for = match request.extensions().get::<portvagt_policy::Decision>() {
            Some(portvagt_policy::Decision::Allow { obligations, .. })
                if obligations.citizen_block =>
            {
                Some(
                    obligations
                        .compartment
                        .clone()
                        .ok_or("a citizen's block without her patient id")?,
                )
            }
            _ => None,
        };
        if let Some(patient) = block_for {
            return self.citizen_block(request, patient).await;
        }
        let (exchange, outgoing) = match self.prepare(request).await? {
            ControlFlow::Break(answered) => return Ok(answered),
            ControlFlow::Continue(forward) => forward,
        };
        let response = self.send(&exchange, outgoing).await?;
        self.respond(exchange, response).await
    }

    /// Reads the target of a patient-context update, patch or delete (or of an operation on
    /// an instance) before it is sent: it must be the patient's (or not exist), and a write
    /// (whose `headers` are given) is bound to the version read with `If-Match`, so it cannot
    /// have changed hands in between.
    async fn verify_target(
        &self,
        upstream: &Upstream,
        relative: &str,
        patient: &str,
        patch: Option<&serde_json::Value>,
        headers: Option<&mut http::HeaderMap>,
        record_handle: Option<&RequestRecord>,
    ) -> Result<(), BoxError> {
        let current = match upstream
            .backend
            .fetch_json(relative, None, self.max_response_bytes, &self.metrics)
            .await?
        {
            Fetched::Found(current) => current,
            // A write to, or an operation on, an instance that is not there (or was deleted) is
            // not sent: answered as another patient's is, so that neither tells whether it
            // exists (an update does not create under a patient's scope).
            Fetched::Missing => return Err(crate::consent::NotFoundError.into()),
        };
        if membership(&current, patient) != Membership::Member {
            return Err(self.refused_as_missing(record_handle));
        }
        let version = current
            .pointer("/meta/versionId")
            .and_then(serde_json::Value::as_str);
        // A JSON Patch that can change whose data it is: judged by what it makes of the
        // version read (and the write is bound to that version), so that it stays hers.
        if let Some(document) = patch {
            let result =
                version.and_then(|_| portvagt_policy::patch::apply_json_patch(document, &current));
            let Some(result) = result else {
                return Err(self.deny(
                    portvagt_policy::DenyReason::WriteNotVerifiable,
                    record_handle,
                    None,
                ));
            };
            if !portvagt_policy::stays_hers(&result, patient) {
                return Err(self.deny(
                    portvagt_policy::DenyReason::OutsideCompartment,
                    record_handle,
                    None,
                ));
            }
        }
        if let (Some(headers), Some(version)) = (headers, version) {
            bind_to_version(headers, version)?;
        }
        Ok(())
    }
}

/// Whether an `If-Match` value (a list of entity tags, `W/"3"`, `"3"`, or `*`; RFC 9110
/// §13.1.1) holds for `version`: one of its tags names it, or `*` (any version that exists)
/// holds for the one read.
fn same_version(asked: &str, version: &str) -> bool {
    asked.split(',').any(|tag| {
        let tag = tag.trim();
        let tag = tag
            .strip_prefix("W/")
            .or_else(|| tag.strip_prefix("w/"))
            .unwrap_or(tag)
            .trim();
        let tag = tag
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(tag);
        tag == version || tag == "*"
    })
}

/// Binds a write to `version`, the one the gateway read and checked: `If-Match` is set to it,
/// and a client's own `If-Match` naming another is refused (412) rather than sent, where the
/// server would change a version nobody checked.
fn bind_to_version(headers: &mut http::HeaderMap, version: &str) -> Result<(), BoxError> {
    if let Some(asked) = headers.get(header::IF_MATCH) {
        let asked = asked.to_str().unwrap_or_default();
        if !same_version(asked, version) {
            return Err(ProxyError::PreconditionFailed.into());
        }
    }
    let value = HeaderValue::try_from(format!("W/\"{version}\""))
        .map_err(|_| ProxyError::LookupFailed(http::StatusCode::OK))?;
    headers.insert(header::IF_MATCH, value);
    Ok(())
}

/// Each entry of a batch or transaction as the access of its own it is (what its audit record
/// says): its request, the status its answer carried, and the patients it touched before
/// (`touched`, per entry) and in its answer. `None` when the answer is not a readable Bundle.
fn entry_records(
    fhir: &FhirRequest,
    touched: &[Vec<String>],
    answer: &[u8],
    identified: &Identified,
) -> Option<Vec<EntryRecord>> {
    let Some(RequestBody::Bundle { entries, .. }) = fhir.body() else {
        return None;
    };
    let answer = serde_json::from_slice::<serde_json::Value>(answer).ok()?;
    let answered = answer.get("entry").and_then(serde_json::Value::as_array);
    let records = entries
        .iter()
        .enumerate()
        .map(|(index, request)| {
            let response = answered.and_then(|a| a.get(index));
            let status = response
                .and_then(|e| e.pointer("/response/status"))
                .and_then(serde_json::Value::as_str)
                .and_then(|s| s.split(' ').next()?.parse().ok())
                .unwrap_or(0);
            let mut patients = touched.get(index).cloned().unwrap_or_default();
            if let Some(resource) = response.and_then(|e| e.get("resource")) {
                patients.extend(identified.patients_of(resource));
            }
            patients.sort_unstable();
            patients.dedup();
            EntryRecord {
                request: Arc::new(request.clone()),
                status,
                patients,
            }
        })
        .collect();
    Some(records)
}

/// How the paging links of an answer are signed: by whom, continuing which request, and
/// whether the answer is itself a followed page.
#[derive(Debug, Clone, Copy)]
struct PageSigning<'a> {
    pager: &'a Pager,
    origin: &'a PageOrigin,
    /// The request followed a signed link of this kind.
    followed: Option<LinkKind>,
}

impl PageSigning<'_> {
    /// The gateway's signed link of `kind` for the part of a backend link below the backend's
    /// base.
    fn link(&self, rewriter: &UrlRewriter, rest: &str, kind: LinkKind) -> Option<String> {
        let token = self.pager.mint(self.origin, rest, kind)?;
        Some(format!("{}/{PAGE_SEGMENT}/{token}", rewriter.public_base()))
    }

    /// The signed link of `kind` for a whole backend URL, if it is below the backend's base.
    fn url(&self, rewriter: &UrlRewriter, url: &str, kind: LinkKind) -> Option<String> {
        self.link(rewriter, rewriter.below(url)?, kind)
    }
}

/// Rewrites the backend's URLs in a Bundle to the gateway's; with `paging`, its paging links
/// become links the gateway signs for the caller, continuing the request it began with. With
/// `patients`, whose data a Bundle read from its bytes holds comes along, from the same scan
/// (`Some(None)`: it takes the tree; `None`: not read).
fn rewrite_bundle(
    upstream: &Upstream,
    bytes: Bytes,
    paging: Option<PageSigning<'_>>,
    status: http::StatusCode,
    patients: bool,
) -> Result<(Bytes, FoundPatients), ProxyError> {
    // Cheap check first: no backend URL in the body means nothing to rewrite, unless links are
    // signed, where a link in any other form must not reach the client as it is.
    let needle = upstream.backend.base_url().as_bytes();
    if paging.is_none() && memchr::memmem::find(&bytes, needle).is_none() {
        return Ok((bytes, None));
    }
    let link = |rest: &str| {
        paging
            .as_ref()?
            .link(&upstream.rewriter, rest, LinkKind::Page)
    };
    let signed = paging.as_ref().map(|signing| Paging {
        // A followed page's `self` is a page too: the backend's link to it, signed.
        sign_self: signing.followed.is_some(),
        link: &link,
    });
    // The resources are copied as they came; only a Bundle that cannot be read so (a key given
    // twice, say) is parsed whole.
    match upstream
        .rewriter
        .rewrite_bundle_bytes(&bytes, signed.as_ref(), patients)
    {
        Ok(Some(rewritten)) => return Ok((Bytes::from(rewritten.bytes), rewritten.patients)),
        Ok(None) => return Ok((bytes, None)),
        Err(_) => {}
    }
    // Read as strictly as every check reads: a member given twice (which a tree would quietly
    // keep one of) is an answer that cannot be read.
    let Ok(mut value) = crate::strict_json::tree_unique(&bytes) else {
        // A successful answer that cannot be read at all may hold the backend's links: it does
        // not leave with them unsigned. One with no body (an export's 202) holds none.
        if status.is_success() && !bytes.trim_ascii().is_empty() {
            return Err(ProxyError::UnreadableAnswer);
        }
        return Ok((bytes, None));
    };
    if !upstream
        .rewriter
        .rewrite_bundle(&mut value, signed.as_ref())
    {
        return Ok((bytes, None));
    }
    Ok((
        serde_json::to_vec(&value).map(Bytes::from).unwrap_or(bytes),
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn elements_are_widened_in_one_parameter_whatever_its_spelling() {
        let added = ["subject".to_owned(), "contained".to_owned()];
        assert_eq!(
            widen_elements(
                "code=x&_elements=code,value&_count=5",
                &["code", "value"],
                &added
            ),
            "code=x&_count=5&_elements=code%2Cvalue%2Csubject%2Ccontained"
        );
        // Spelled with an encoded name or value, it is still the one parameter replaced.
        assert_eq!(
            widen_elements("%5Felements=code%2Cvalue", &["code", "value"], &added),
            "_elements=code%2Cvalue%2Csubject%2Ccontained"
        );
        assert_eq!(
            widen_elements("_elements=code", &["code"], &added),
            "_elements=code%2Csubject%2Ccontained"
        );
    }

    #[test]
    fn narrowing_appends_encoded_parameters_and_never_replaces_any() {
        let patient = params(&[("patient", "Patient/pat anne&x=1")]);
        // FHIR ANDs repeated parameters: what the client sent stays, the narrowing is added.
        assert_eq!(
            append_params("patient=pat-bo", &patient),
            "patient=pat-bo&patient=Patient%2Fpat%20anne%26x%3D1"
        );
        assert_eq!(
            append_params("", &params(&[("_sort", "-date")])),
            "_sort=-date"
        );
        assert_eq!(
            with_params("Observation?code=1", &params(&[("patient", "p1")])),
            "Observation?code=1&patient=p1"
        );
        assert_eq!(
            with_params("Observation", &params(&[("patient", "p1")])),
            "Observation?patient=p1"
        );
    }

    #[test]
    fn only_obligations_that_bind_the_answer_make_it_checked() {
        assert!(response_check(&Obligations::default()).is_none());
        let compartment = Obligations {
            compartment: Some("pat-anne".into()),
            ..Obligations::default()
        };
        let check = response_check(&compartment).unwrap();
        assert_eq!(check.compartment, Some("pat-anne"));
        let granular = Obligations {
            restriction: params(&[("category", "laboratory")]),
            ..Obligations::default()
        };
        assert_eq!(response_check(&granular).unwrap().restriction.len(), 1);
        // Narrowing alone (add_params) binds the request, not the answer.
        let narrowed = Obligations {
            add_params: params(&[("patient", "p1")]),
            ..Obligations::default()
        };
        assert!(response_check(&narrowed).is_none());
    }
}
