//! Audit: every request that passes the limits, whatever becomes of it (refused for its token,
//! denied by policy, answered by the backend, failed), is recorded as IHE BALP AuditEvents
//! before its answer goes back ([`crate::audit`]). Inner layers tell what they learned through
//! the request's [`RequestRecord`]; this layer reads it once the inner service has answered.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use portvagt_policy::{FhirRequest, Reach};
use tower::{Layer, Service};

use super::request_id::RequestId;
use super::{BoxFuture, take_ready};
use crate::audit::event::{AccessFacts, AccessKind};
use crate::audit::{AuditUnavailableError, Auditor};
use crate::auth::Principal;
use crate::body::{Body, BoxError};
use crate::context::ClientAddr;
use crate::context::RequestRecord;
use crate::encoding::form_encode;
use crate::tls::PeerIdentity;
use crate::trace::{Phase, Traced};

/// Records every request with `auditor`; with `None`, nothing is recorded.
#[derive(Debug, Clone)]
pub struct AuditLayer {
    auditor: Option<Arc<Auditor>>,
}

impl AuditLayer {
    /// Audits with `auditor`, if there is one.
    pub fn new(auditor: Option<Arc<Auditor>>) -> Self {
        Self { auditor }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            auditor: self.auditor.clone(),
        }
    }
}

/// See [`AuditLayer`].
#[derive(Debug, Clone)]
pub struct Audit<S> {
    inner: S,
    auditor: Option<Arc<Auditor>>,
}

impl<S> Service<Request<Body>> for Audit<S>
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

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let Some(auditor) = self.auditor.clone() else {
            return Box::pin(async move { inner.call(request).await });
        };
        let recorded = time::OffsetDateTime::now_utc();
        let method = request.method().as_str().to_owned();
        let target = request.uri().path_and_query().map_or_else(
            || request.uri().path().to_owned(),
            |pq| pq.as_str().to_owned(),
        );
        let token_exchange = request.uri().path() == "/token";
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let peer = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        let client_ip = request.extensions().get::<ClientAddr>().map(|a| a.0.ip());
        let traced = request.extensions().get::<Traced>().cloned();
        let trace_id = traced.as_ref().map(|t| t.context.trace_id.hex());
        let record = match request.extensions().get::<RequestRecord>() {
            Some(record) => record.clone(),
            None => {
                let record = RequestRecord::default();
                request.extensions_mut().insert(record.clone());
                record
            }
        };
        // The request and its record run as their own task: if the client hangs up, the
        // connection's future is dropped, but what was started at the backend is still
        // recorded.
        let task = tokio::spawn(async move {
            let result = inner.call(request).await;
            let (status, reason) = match &result {
                Ok(response) => (response.status().as_u16(), None),
                Err(error) => {
                    let rescued = crate::layers::rescue::rescue(error.as_ref());
                    (rescued.outcome.status.as_u16(), Some(rescued.outcome.code))
                }
            };
            let (
                caller,
                fhir,
                answered,
                touched,
                entries,
                break_glass,
                recorded_reason,
                continues,
                bases,
                citizen_block,
            ) = {
                let fields = record.fields();
                (
                    fields.caller.clone(),
                    fields.request.clone(),
                    fields.patients.clone(),
                    fields.touched.clone(),
                    fields.entries.clone(),
                    fields
                        .break_glass
                        .clone()
                        .map(|reason| (reason, fields.break_glass_patients.clone())),
                    fields.reason,
                    fields.continues.clone(),
                    fields.bases.clone(),
                    fields.citizen_block.clone(),
                )
            };
            // A followed paging link is recorded as the search it continues.
            let target = continues.unwrap_or(target);
            // A batch or transaction whose entries were answered: each entry is an access of
            // its own, in the logs of the patients it touched; the Bundle itself names nobody.
            let patients = if entries.is_empty() {
                patients_of_access(answered, touched, fhir.as_deref(), caller.as_deref())
            } else {
                Vec::new()
            };
            let facts = AccessFacts {
                request_id: &request_id,
                trace_id: trace_id.as_deref(),
                recorded,
                method: &method,
                target: &target,
                kind: if token_exchange {
                    AccessKind::TokenExchange
                } else {
                    AccessKind::Fhir(fhir.as_deref())
                },
                status,
                reason: reason.or(recorded_reason),
                principal: caller.as_deref(),
                peer: peer.as_deref(),
                client_ip,
                patients: &patients,
                break_glass: break_glass
                    .as_ref()
                    .map(|(reason, patients)| (reason.as_str(), patients.as_slice())),
                bases: &bases,
                citizen_block: citizen_block.as_ref(),
            };
            let targets: Vec<String> = entries
                .iter()
                .map(|entry| entry_target(&target, &entry.request))
                .collect();
            let mut all = vec![facts];
            for (entry, entry_target) in entries.iter().zip(&targets) {
                all.push(AccessFacts {
                    method: entry_method(&entry.request),
                    target: entry_target,
                    kind: AccessKind::Fhir(Some(&entry.request)),
                    status: entry.status,
                    reason: None,
                    patients: &entry.patients,
                    ..all[0]
                });
            }
            let phase = Phase::start(traced.as_ref(), "portvagt.audit");
            auditor
                .record_all(&all)
                .await
                .map_err(|AuditUnavailableError| -> BoxError { AuditUnavailableError.into() })?;
            phase.end(false);
            result
        });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|_| Err(AuditUnavailableError.into()))
        })
    }
}

/// Every patient whose log must show the access: those in the answer as it left, those the
/// request touched before it (named in any spelling, written, owners before a write: the
/// proxy's [`Reach`] with its look-ups), or, for a request that never reached the proxy, its
/// [`Reach`] alone; failing all, the caller's own patient context.
fn patients_of_access(
    mut patients: Vec<String>,
    touched: Option<Vec<String>>,
    request: Option<&FhirRequest>,
    caller: Option<&Principal>,
) -> Vec<String> {
    match (touched, request) {
        (Some(touched), _) => patients.extend(touched),
        (None, Some(request)) => {
            patients.extend(Reach::of(request).to_record().map(str::to_owned));
        }
        (None, None) => {}
    }
    patients.sort_unstable();
    patients.dedup();
    if patients.is_empty()
        && let Some(patient) = caller.and_then(Principal::patient)
    {
        patients.push(patient.to_owned());
    }
    patients
}

/// The target of a batch entry as if it had been sent alone: below the Bundle's own path.
fn entry_target(bundle_target: &str, entry: &FhirRequest) -> String {
    let base = bundle_target.split('?').next().unwrap_or_default();
    let mut target = format!("{}/{}", base.trim_end_matches('/'), entry.path());
    let mut separator = '?';
    for (name, value) in entry.params() {
        target.push(separator);
        target.push_str(&form_encode(name));
        target.push('=');
        target.push_str(&form_encode(value));
        separator = '&';
    }
    target
}

/// The HTTP method a batch entry stands for (the audit action comes from its interaction).
fn entry_method(entry: &FhirRequest) -> &'static str {
    use portvagt_policy::Interaction as I;
    match entry.interaction() {
        I::Create => "POST",
        I::Update | I::ConditionalUpdate => "PUT",
        I::Patch | I::ConditionalPatch => "PATCH",
        I::Delete | I::ConditionalDelete => "DELETE",
        _ => "GET",
    }
}
