//! The proxy: sends an authorised request to the backend FHIR server over a pooled hyper
//! client and prepares the answer for the client (header hygiene, URL rewriting).
//!
//! The request path and query are forwarded byte for byte as the classifier saw them, below the
//! backend's base path. Bundles (search, history) are buffered up to a limit to rewrite their
//! URLs; other responses stream through. Backend failures never reach the client as they are:
//! a 5xx becomes the gateway's own 502 (or 503), so stack traces and backend versions stay inside.

mod bundle;
mod consent;
pub mod headers;
pub mod rewrite;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt as _, Limited};
use portvagt_policy::compartment::{Membership, membership, patients_in_answer, patients_in_body};
use portvagt_policy::{
    Decision, DenyReason, FhirRequest, FilterMode, Filtered, Interaction, Obligations, Reach,
    ResponseCheck, check_response,
};
use tower::Service;

use self::consent::{ConsentContext, Touched, overlaps};
use self::rewrite::UrlRewriter;
use crate::auth::Principal;
pub use crate::backend::{Backend, Fetched, ProxyError};
use crate::body::{Body, BoxError, boxed, full};
use crate::config::FilteredEntries;
use crate::consent::{
    BREAK_GLASS_HEADER, ConsentStore, caller_ids, consent_refusal, not_found_outcome,
};
use crate::context::{EntryRecord, RequestRecord};
use crate::encoding::form_encode;
use crate::layers::BoxFuture;
use crate::metrics::{Metrics, status_class};
use crate::routing::{FhirPath, SharedRoutes};
use crate::runtime::Runtime;
use crate::smart::SmartDocuments;
use portvagt_policy::consent::{
    Duties, Refusals, answers_not_found, count_only, not_found_alike, shape_refusal, withhold,
};
use portvagt_policy::request::RequestBody;

/// The client's address, put into request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The innermost service: forwards to the backend.
#[derive(Debug, Clone)]
pub struct Proxy {
    backend: Arc<Backend>,
    public_host: Option<HeaderValue>,
    max_response_bytes: usize,
    filter_mode: FilterMode,
    metrics: Arc<Metrics>,
    smart: Arc<SmartDocuments>,
    /// The audit trail needs to know whose data each answer holds.
    audited: bool,
    /// Citizens' blocks, when enforced.
    consent: Option<Arc<ConsentStore>>,
    /// Where requests go, most specific first.
    routes: SharedRoutes,
}

/// A backend and the rewriter for the URLs in its answers.
#[derive(Debug, Clone)]
struct Upstream {
    backend: Arc<Backend>,
    rewriter: Arc<UrlRewriter>,
}

impl Proxy {
    /// The proxy to the runtime's backend, whose clients see its public base URL.
    pub fn new(runtime: &Runtime) -> Self {
        let public_base_url = &runtime.public_base_url;
        let public_host = public_base_url.parse::<Uri>().ok().and_then(|uri| {
            uri.authority()
                .and_then(|a| HeaderValue::try_from(a.as_str()).ok())
        });
        Self {
            backend: runtime.backend.clone(),
            public_host,
            max_response_bytes: usize::try_from(runtime.config.limits.max_response_bytes)
                .unwrap_or(usize::MAX),
            filter_mode: match runtime.config.policy.filtered_entries {
                FilteredEntries::Remove => FilterMode::Remove,
                FilteredEntries::Deny => FilterMode::Deny,
            },
            metrics: runtime.metrics.clone(),
            smart: runtime.smart.clone(),
            audited: runtime.auditor.is_some(),
            consent: runtime.consent.clone(),
            routes: runtime.upstreams.clone(),
        }
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
        Box::pin(async move { this.forward(request).await })
    }
}

/// What answers under `obligations` must satisfy, if anything.
pub(crate) fn response_check(obligations: &Obligations) -> Option<ResponseCheck<'_>> {
    (obligations.compartment.is_some() || !obligations.restriction.is_empty()).then(|| {
        ResponseCheck {
            compartment: obligations.compartment.as_deref(),
            restriction: &obligations.restriction,
        }
    })
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

/// Appends `params` to an entry URL (`Type?query` or `Type`).
pub(crate) fn with_params(url: &str, params: &[(String, String)]) -> String {
    match url.split_once('?') {
        Some((path, query)) => format!("{path}?{}", append_params(query, params)),
        None => format!("{url}?{}", append_params("", params)),
    }
}

impl Proxy {
    async fn forward(self, request: Request<Body>) -> Result<Response<Body>, BoxError> {
        let (mut parts, body) = request.into_parts();
        // Classification and authorization always run before the proxy; without their results
        // nothing is forwarded.
        let path = parts
            .extensions
            .remove::<FhirPath>()
            .ok_or("request reached the proxy unclassified")?;
        let fhir = parts
            .extensions
            .get::<Arc<FhirRequest>>()
            .cloned()
            .ok_or("request reached the proxy unclassified")?;
        let Some(Decision::Allow {
            mut obligations,
            granted_by,
        }) = parts.extensions.remove::<Decision>()
        else {
            return Err("request reached the proxy unauthorised".into());
        };
        // The audit log lives in the audit repository; a citizen reading theirs (a
        // patient-context scope) sees it newest first and in the citizen's view.
        let reads_audit_log = fhir
            .resource_type()
            .is_some_and(|t| t.as_str() == "AuditEvent");
        let routes = self.routes.load();
        // No route takes this type under this base: not found, never the main backend by
        // another path (which would skip the rules written for the main base's paths).
        let upstream = routes
            .iter()
            .find(|route| route.takes(&path.base, fhir.resource_type().map(|t| t.as_str())))
            .map(|route| Upstream {
                backend: route.backend.clone(),
                rewriter: route.rewriter.clone(),
            })
            .ok_or(portvagt_policy::ClassifyError::UnknownPath)?;
        let citizen_view = reads_audit_log && granted_by.starts_with("patient/");
        let record_handle = parts.extensions.get::<RequestRecord>().cloned();
        let client_ip = parts.extensions.get::<ClientAddr>().map(|addr| addr.0.ip());

        // Request phase: narrowing, the canonical search form, the planned batch.
        let mut query = path.query;
        let mut form = path.form;
        if !obligations.add_params.is_empty() {
            match &mut form {
                Some(form) => *form = append_params(form, &obligations.add_params),
                None => {
                    query = Some(append_params(
                        query.as_deref().unwrap_or(""),
                        &obligations.add_params,
                    ))
                }
            }
        }
        if citizen_view
            && fhir.interaction().returns_bundle()
            && !fhir.params().iter().any(|(name, _)| name == "_sort")
        {
            let newest_first = [("_sort".to_owned(), "-date".to_owned())];
            match &mut form {
                Some(form) => *form = append_params(form, &newest_first),
                None => query = Some(append_params(query.as_deref().unwrap_or(""), &newest_first)),
            }
        }
        if obligations.verify_target
            && let Some(patient) = &obligations.compartment
        {
            self.verify_target(
                &upstream,
                &path.relative,
                patient,
                &mut parts.headers,
                record_handle.as_ref(),
            )
            .await?;
        }
        // Negative consent, before anything reaches the backend: the patients the request
        // touches (its reach, with identifiers resolved and the owners of what it writes).
        let consent = self.consent.as_ref().and_then(|store| {
            let principal = parts.extensions.get::<Arc<Principal>>()?;
            // UTF-8 as sent (a Danish reason has æ, ø, å), not only visible ASCII.
            let reason = parts
                .headers
                .get(BREAK_GLASS_HEADER)
                .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                .map(|v| v.chars().take(500).collect::<String>())
                .or_else(|| principal.identity().break_glass_reason.clone());
            let backend = routes
                .iter()
                .find(|route| route.takes(&path.base, Some("Consent")))
                .map_or_else(|| self.backend.clone(), |route| route.backend.clone());
            Some(ConsentContext {
                store: store.clone(),
                backend,
                caller: caller_ids(principal),
                purpose: principal.purpose_of_use().map(str::to_owned),
                reason,
            })
        });
        parts.headers.remove(BREAK_GLASS_HEADER);
        let reach = Reach::of(&fhir);
        // Request shapes whose answer would count, hide or move what consent and the audit
        // trail must see (a count naming nobody, `_elements`, `_has` on reference data, a
        // patch that moves values): refused whatever the scopes.
        let duties = Duties {
            consent: consent.is_some(),
            audit: self.audited,
        };
        if let Some(reason) = shape_refusal(&fhir, &reach, duties) {
            return Err(self.deny(reason, record_handle.as_ref(), None));
        }
        let touched = if consent.is_some() || self.audited {
            let touched = self
                .touched(
                    &upstream,
                    &fhir,
                    &reach,
                    &obligations.entries,
                    obligations.compartment.is_some(),
                )
                .await?;
            if let Some(record_handle) = &record_handle {
                record_handle.fields().touched = Some(touched.patients.clone());
            }
            touched
        } else {
            Touched::default()
        };
        if let Some(consent) = &consent {
            // Batch entries a Consent refuses are answered by the gateway one by one (403 if
            // they named the patient, else 404) and never sent; a transaction is refused whole.
            for (index, reason) in self
                .check_consent(consent, &fhir, &touched, record_handle.as_ref())
                .await?
            {
                if let Some(decision) = obligations.entries.get_mut(index) {
                    *decision = Decision::Deny { reason };
                }
            }
        }
        // The write changes the version that was read and checked, or nothing.
        if let Some(version) = &touched.owner_version
            && !parts.headers.contains_key(header::IF_MATCH)
            && let Ok(value) = HeaderValue::try_from(format!("W/\"{version}\""))
        {
            parts.headers.insert(header::IF_MATCH, value);
        }
        // A total counts what blocks withhold (a class or a resource of a named patient's, a
        // resource in two compartments): none is given while blocks are enforced, except the
        // one a count of named patients exists to answer (checked above as strictly as a
        // write: any Consent of theirs that could withhold part of it refused it).
        let strip_total = consent.is_some() && !(count_only(&fhir) && reach.pinned());
        let mut body = body;
        let mut batch = None;
        if fhir.interaction() == Interaction::BatchOrTransaction {
            let bytes = body.collect().await?.to_bytes();
            let (forwarded, plan) = bundle::plan(&bytes, &obligations.entries)?;
            if !plan.forwards_anything() {
                let answer = bundle::merge(None, &plan, self.filter_mode)?;
                record_entries(
                    record_handle.as_ref(),
                    &fhir,
                    &touched.entry_patients,
                    &answer,
                );
                return Ok(fhir_json_response(StatusCode::OK, answer));
            }
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
            body = full(forwarded);
            batch = Some(plan);
        }
        if let Some(form) = form {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(form.len()));
            body = full(form);
        }
        parts.uri = upstream
            .backend
            .uri(&path.relative, query.as_deref().filter(|q| !q.is_empty()))?;
        parts.version = Version::HTTP_11;
        headers::sanitize_request(
            &mut parts.headers,
            upstream.backend.forward_authorization,
            client_ip,
            self.public_host.as_ref(),
        );
        let is_head = parts.method == Method::HEAD;
        if is_head && (response_check(&obligations).is_some() || consent.is_some() || self.audited)
        {
            // A HEAD answer has no body to check: fetch it with GET, check it (compartment,
            // consent), and let the HTTP layer leave the body out. Otherwise HEAD would tell
            // whose resource exists and when it changed.
            parts.method = Method::GET;
        }
        let outgoing = Request::from_parts(parts, body);

        let started = Instant::now();
        let result = upstream.backend.send(outgoing, &self.metrics).await;
        let upstream_latency = started.elapsed();
        let response = result?;
        let status = response.status();
        self.metrics
            .upstream_duration
            .with_label_values(&[upstream.backend.name(), status_class(status.as_u16())])
            .observe(upstream_latency.as_secs_f64());
        if let Some(record_handle) = &record_handle {
            let mut fields = record_handle.fields();
            fields.upstream_latency = Some(upstream_latency);
            fields.upstream_status = Some(status.as_u16());
        }
        // Under citizens' blocks a missing resource is answered in the gateway's words, the
        // same as one withheld: the backend's own 404 might differ from it, and a 410 would
        // say that it existed.
        if consent.is_some()
            && (status == StatusCode::NOT_FOUND || status == StatusCode::GONE)
            && answers_not_found(fhir.interaction())
        {
            return Err(crate::consent::NotFoundError.into());
        }
        if status.is_server_error() {
            tracing::warn!(
                upstream_status = status.as_u16(),
                "backend answered with a server error"
            );
            return Err(ProxyError::BackendStatus(status).into());
        }

        // Response phase: header hygiene, URL rewriting, compartment checks, batch merging.
        let (mut parts, body) = response.into_parts();
        headers::sanitize_response(&mut parts.headers);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(rewritten) = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| upstream.rewriter.rewrite(v))
                && let Ok(value) = HeaderValue::try_from(rewritten)
            {
                parts.headers.insert(name, value);
            }
        }
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("json"));
        let check = response_check(&obligations);
        let must_check = check.is_some() || batch.is_some();
        let rewrites_urls = fhir.interaction().returns_bundle() && is_json;
        // The CapabilityStatement describes the gateway's security, not the backend's.
        let describes_security =
            fhir.interaction() == Interaction::Capabilities && is_json && status.is_success();
        let audits_patients =
            (self.audited || consent.is_some() || citizen_view) && is_json && status.is_success();
        if !must_check
            && !describes_security
            && !audits_patients
            && ((is_head && consent.is_none()) || (!is_head && !rewrites_urls))
        {
            return Ok(Response::from_parts(parts, boxed(body)));
        }
        let bytes = Limited::new(body, self.max_response_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ProxyError::ResponseTooLarge
                } else {
                    ProxyError::ResponseBody(e)
                }
            })?;
        let mut bytes = rewrite_bundle(&upstream, bytes.to_bytes());
        if describes_security
            && let Some(rewritten) = self.smart.rewrite_capability_statement(&bytes)
        {
            bytes = Bytes::from(rewritten);
        }
        if let Some(check) = &check
            && status.is_success()
            && !bytes.is_empty()
        {
            // Fail closed: what cannot be read as FHIR JSON cannot be shown to be the patient's.
            let verdict = if is_json {
                check_response(&bytes, check, self.filter_mode)
            } else {
                Filtered::Forbidden
            };
            match verdict {
                Filtered::Unchanged => {}
                Filtered::Rewritten(filtered) => bytes = Bytes::from(filtered),
                Filtered::Forbidden => {
                    let reason = if obligations.compartment.is_some() {
                        DenyReason::OutsideCompartment
                    } else {
                        DenyReason::OutsideGranularScope
                    };
                    return Err(self.deny(reason, record_handle.as_ref(), None));
                }
            }
        }
        if let Some(plan) = &batch
            && status.is_success()
        {
            bytes = Bytes::from(bundle::merge(Some(&bytes), plan, self.filter_mode)?);
            // Entry by entry as for single requests: not found in the gateway's words.
            if consent.is_some()
                && let Some(RequestBody::Bundle { entries, .. }) = fhir.body()
                && let Ok(mut answer) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                let applies: Vec<bool> = entries
                    .iter()
                    .map(|entry| answers_not_found(entry.interaction()))
                    .collect();
                if not_found_alike(&mut answer, &applies, &not_found_outcome()) {
                    bytes = Bytes::from(serde_json::to_vec(&answer)?);
                }
            }
        }
        if strip_total
            && status.is_success()
            && fhir.interaction().returns_bundle()
            && let Some(without) = portvagt_policy::filter::without_total(&bytes)
        {
            bytes = Bytes::from(without);
        }
        if consent.is_some()
            && status.is_success()
            && fhir.interaction().returns_bundle()
            && let Some(without) = portvagt_policy::filter::without_last_link(&bytes)
        {
            bytes = Bytes::from(without);
        }
        // The patients (for the audit record, and the consent check) read from the bytes, no
        // tree built: unless the citizen view rewrites the answer, or a Consent may withhold
        // part of it, that is all that is needed.
        let from_bytes = if audits_patients && !citizen_view && !bytes.is_empty() {
            patients_in_body(&bytes)
        } else {
            None
        };
        let decided = match from_bytes {
            Some(patients) => {
                let blocks = self
                    .answer_blocks(consent.as_ref(), &patients, record_handle.as_ref())
                    .await?;
                Some((patients, blocks))
            }
            None => None,
        };
        let needs_tree = match &decided {
            Some((_, blocks)) => blocks.is_some(),
            None => audits_patients && !bytes.is_empty(),
        };
        let parsed = if needs_tree {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(answer) => Some(answer),
                // What cannot be read cannot be checked against consents: refused.
                Err(_) if consent.is_some() => {
                    return Err(crate::consent::ConsentUnavailableError.into());
                }
                Err(_) => None,
            }
        } else {
            None
        };
        let audited_patients = match (parsed, decided) {
            (Some(mut answer), decided) => {
                let (mut patients, blocks) = match decided {
                    Some(decided) => decided,
                    None => {
                        let patients = patients_in_answer(&answer);
                        let blocks = self
                            .answer_blocks(consent.as_ref(), &patients, record_handle.as_ref())
                            .await?;
                        (patients, blocks)
                    }
                };
                if let (Some(consent), Some(blocks)) = (&consent, &blocks) {
                    // A searchset, history or batch answer is withheld from entry by entry; a
                    // stored Bundle that was read (a document) is one resource, withheld whole.
                    let is_bundle = fhir.interaction().returns_bundle()
                        && answer.get("resourceType").and_then(|t| t.as_str()) == Some("Bundle");
                    if !is_bundle {
                        // Asked for by the patient's name: refused, and break-the-glass can
                        // follow. Asked for by another name: as if it did not exist.
                        if blocks.withholds(&answer) {
                            return Err(if overlaps(&blocks.patients, &touched.named) {
                                self.consent_denial(
                                    &blocks.patients,
                                    consent,
                                    record_handle.as_ref(),
                                )
                            } else {
                                self.withheld(&blocks.patients, record_handle.as_ref())
                            });
                        }
                    } else {
                        let withheld = withhold(
                            &mut answer,
                            &|r| blocks.withholds(r),
                            &Refusals {
                                forbidden: &consent_refusal(),
                                not_found: &not_found_outcome(),
                                named: &touched.entry_named,
                            },
                        );
                        let emptied = answer
                            .get("entry")
                            .and_then(|e| e.as_array())
                            .is_none_or(Vec::is_empty);
                        if withheld > 0
                            && emptied
                            && fhir.interaction() == Interaction::HistoryInstance
                            && !overlaps(&blocks.patients, &touched.named)
                        {
                            // The history of a resource that is all withheld: as if it never
                            // existed.
                            return Err(self.withheld(&blocks.patients, record_handle.as_ref()));
                        }
                        if withheld > 0 {
                            self.metrics.consent_withheld.inc_by(withheld as u64);
                            bytes = Bytes::from(serde_json::to_vec(&answer)?);
                            patients = patients_in_answer(&answer);
                        }
                    }
                }
                if citizen_view {
                    crate::audit::citizen::citizen_view(&mut answer);
                    bytes = Bytes::from(serde_json::to_vec(&answer)?);
                }
                Some(patients)
            }
            (None, Some((patients, _))) => Some(patients),
            (None, None) => None,
        };
        // What leaves is what is audited: after filtering, merging and withholding.
        if let (Some(patients), Some(record_handle)) = (audited_patients, &record_handle) {
            record_handle.fields().patients = patients;
        }
        if batch.is_some() && status.is_success() {
            record_entries(
                record_handle.as_ref(),
                &fhir,
                &touched.entry_patients,
                &bytes,
            );
        }
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        Ok(Response::from_parts(parts, full(bytes)))
    }

    /// Reads the target of a patient-context update, patch or delete before it is written: it
    /// must be the patient's (or not exist), and the write is bound to the version read with
    /// `If-Match`, so it cannot have changed hands in between.
    async fn verify_target(
        &self,
        upstream: &Upstream,
        relative: &str,
        patient: &str,
        headers: &mut http::HeaderMap,
        record_handle: Option<&RequestRecord>,
    ) -> Result<(), BoxError> {
        let current = match upstream
            .backend
            .fetch_json(relative, None, self.max_response_bytes, &self.metrics)
            .await?
        {
            Fetched::Found(current) => current,
            // Nothing is overwritten: an update creates (its body was checked), a patch or
            // delete gets the backend's own answer.
            Fetched::Missing => return Ok(()),
        };
        if membership(&current, patient) != Membership::Member {
            return Err(self.deny(DenyReason::OutsideCompartment, record_handle, None));
        }
        let version = current
            .pointer("/meta/versionId")
            .and_then(serde_json::Value::as_str);
        if !headers.contains_key(header::IF_MATCH)
            && let Some(value) =
                version.and_then(|v| HeaderValue::try_from(format!("W/\"{v}\"")).ok())
        {
            headers.insert(header::IF_MATCH, value);
        }
        Ok(())
    }
}

/// Records each entry of a batch or transaction as the access of its own it is: its request,
/// the status its answer carried, and the patients it touched before (`touched`, per entry)
/// and in its answer.
fn record_entries(
    record_handle: Option<&RequestRecord>,
    fhir: &FhirRequest,
    touched: &[Vec<String>],
    answer: &[u8],
) {
    let (Some(record_handle), Some(RequestBody::Bundle { entries, .. })) =
        (record_handle, fhir.body())
    else {
        return;
    };
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return;
    };
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
                patients.extend(patients_in_answer(resource));
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
    record_handle.fields().entries = records;
}

/// Rewrites the backend's URLs in a Bundle to the gateway's.
fn rewrite_bundle(upstream: &Upstream, bytes: Bytes) -> Bytes {
    // Cheap check first: no backend URL in the body means nothing to rewrite.
    let needle = upstream.backend.base_url().as_bytes();
    if memchr::memmem::find(&bytes, needle).is_none() {
        return bytes;
    }
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return bytes;
    };
    if !upstream.rewriter.rewrite_bundle(&mut value) {
        return bytes;
    }
    serde_json::to_vec(&value).map(Bytes::from).unwrap_or(bytes)
}
