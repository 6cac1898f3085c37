//! Negative consent at the proxy: the patients a request touches before it is sent (what it
//! names, what a write would change, read first), and the verdicts on them, with break-the-glass
//! recorded on the way. Matching and the rules are in [`crate::consent`] and
//! [`portvagt_policy::consent`].

use std::sync::Arc;

use http::{Request, header};
use http_body_util::{BodyExt as _, Limited};
use portvagt_policy::compartment::patients_in_answer;
use portvagt_policy::consent::{CallerIds, Emergency};
use portvagt_policy::request::RequestBody;
use portvagt_policy::{DenyReason, FhirRequest, Interaction};

use super::{Proxy, ProxyError, Upstream, append_params};
use crate::body::{BoxError, empty};
use crate::consent::{ConsentStore, check_patients, patients_named_by};
use crate::context::RequestRecord;
use crate::layers::authorize::AccessDenied;

/// The caller as consent sees them, for one request.
pub(super) struct ConsentContext {
    pub(super) store: Arc<ConsentStore>,
    pub(super) caller: CallerIds,
    pub(super) purpose: Option<String>,
    pub(super) reason: Option<String>,
}

impl ConsentContext {
    pub(super) fn emergency(&self) -> Emergency<'_> {
        Emergency::new(self.purpose.as_deref(), self.reason.as_deref())
    }
}

impl Proxy {
    /// The patients a request touches before anything happens: those it names or writes
    /// about, the current owner of what a write by id would change or delete (read first, as
    /// the answer comes too late), and the same for every write entry of a batch or
    /// transaction.
    pub(super) async fn patients_touched(
        &self,
        upstream: &Upstream,
        request: &FhirRequest,
    ) -> Result<Vec<String>, BoxError> {
        let mut patients = patients_named_by(request);
        let entries: Vec<&FhirRequest> = match request.body() {
            Some(RequestBody::Bundle { entries, .. }) => entries.iter().collect(),
            _ => vec![request],
        };
        for entry in entries {
            let is_batch_entry = !std::ptr::eq(entry, request);
            let writes = !matches!(
                entry.interaction(),
                Interaction::Read
                    | Interaction::Vread
                    | Interaction::SearchType
                    | Interaction::SearchCompartment
                    | Interaction::SearchSystem
                    | Interaction::HistoryInstance
                    | Interaction::HistoryType
                    | Interaction::HistorySystem
                    | Interaction::Capabilities
                    | Interaction::Operation
            );
            // A batch's reads are answered entry by entry (blocked ones 403) on the way back;
            // its writes must be stopped before they happen, which refuses the whole Bundle.
            if is_batch_entry && writes {
                patients.extend(patients_named_by(entry));
            }
            let writes_by_id = matches!(
                entry.interaction(),
                Interaction::Update | Interaction::Patch | Interaction::Delete
            );
            if let (true, Some(resource_type), Some(id)) =
                (writes_by_id, entry.resource_type(), entry.id())
            {
                let relative = format!("{}/{id}", resource_type.as_str());
                patients.extend(self.current_patients(upstream, &relative, None).await?);
            }
            // A conditional write changes whatever its criteria find: find it first.
            let conditional = matches!(
                entry.interaction(),
                Interaction::ConditionalUpdate
                    | Interaction::ConditionalPatch
                    | Interaction::ConditionalDelete
            );
            if let (true, Some(resource_type)) = (conditional, entry.resource_type()) {
                let criteria = append_params("", entry.params());
                patients.extend(
                    self.current_patients(upstream, resource_type.as_str(), Some(&criteria))
                        .await?,
                );
            }
        }
        patients.sort_unstable();
        patients.dedup();
        Ok(patients)
    }

    /// The patients of the resource at `relative` now, or of what the search `query` there
    /// finds (none if nothing is found).
    async fn current_patients(
        &self,
        upstream: &Upstream,
        relative: &str,
        query: Option<&str>,
    ) -> Result<Vec<String>, BoxError> {
        let request = Request::get(upstream.backend.uri(relative, query)?)
            .header(header::ACCEPT, "application/fhir+json")
            .body(empty())?;
        let response = upstream
            .backend
            .client
            .request(request)
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ProxyError::Unreachable(e)
                } else {
                    ProxyError::Failed(e)
                }
            })?;
        if !response.status().is_success() {
            return Ok(Vec::new());
        }
        let bytes = Limited::new(response.into_body(), self.max_response_bytes)
            .collect()
            .await
            .map_err(ProxyError::ResponseBody)?
            .to_bytes();
        let current: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| crate::consent::ConsentUnavailable)?;
        Ok(patients_in_answer(&current))
    }

    /// Refuses the request if any of `patients` has a block against the caller that stands.
    pub(super) async fn check_consent(
        &self,
        consent: &ConsentContext,
        patients: &[String],
        record_handle: Option<&RequestRecord>,
    ) -> Result<(), BoxError> {
        let blocked = self
            .consent_verdict(consent, patients, record_handle)
            .await?;
        if blocked.is_empty() {
            Ok(())
        } else {
            Err(self.consent_denial(&blocked, consent, record_handle))
        }
    }

    /// The patients among `patients` whose blocks against the caller stand; a block lifted by
    /// break-the-glass is recorded (audit, metric) on the way.
    /// The patients among `patients` whose blocks withhold them from this caller: none
    /// without consent enforcement or patients.
    pub(super) async fn blocked(
        &self,
        consent: Option<&ConsentContext>,
        patients: &[String],
        record_handle: Option<&RequestRecord>,
    ) -> Result<Vec<String>, BoxError> {
        match consent {
            Some(consent) if !patients.is_empty() => {
                self.consent_verdict(consent, patients, record_handle).await
            }
            _ => Ok(Vec::new()),
        }
    }

    pub(super) async fn consent_verdict(
        &self,
        consent: &ConsentContext,
        patients: &[String],
        record_handle: Option<&RequestRecord>,
    ) -> Result<Vec<String>, BoxError> {
        let blocks = consent.store.blocks(patients).await?;
        let checked = check_patients(patients, &blocks, &consent.caller, consent.emergency());
        if !checked.broken_glass.is_empty()
            && let Some(record_handle) = record_handle
        {
            let mut fields = record_handle.fields();
            if fields.break_glass.is_none() {
                fields.break_glass = consent.reason.clone();
                self.metrics.break_glass.inc();
                tracing::warn!(
                    reason = consent.reason.as_deref().unwrap_or_default(),
                    "break-the-glass: a consent block was set aside"
                );
            }
            for patient in checked.broken_glass {
                if !fields.break_glass_patients.contains(&patient) {
                    fields.break_glass_patients.push(patient);
                }
            }
        }
        Ok(checked.blocked)
    }

    pub(super) fn consent_denial(
        &self,
        blocked: &[String],
        consent: &ConsentContext,
        record_handle: Option<&RequestRecord>,
    ) -> BoxError {
        let reason = if consent.emergency() == Emergency::WithoutReason {
            DenyReason::BreakGlassReasonRequired
        } else {
            DenyReason::ConsentBlock
        };
        if let Some(record_handle) = record_handle {
            let mut fields = record_handle.fields();
            fields.decision = Some("deny");
            fields.reason = Some(reason.code());
            // The refused attempt is in the blocking patients' own logs.
            fields.patients = blocked.to_vec();
        }
        self.metrics
            .access_denied
            .with_label_values(&[reason.code()])
            .inc();
        AccessDenied { reason }.into()
    }
}
