//! Authorization: asks `portvagt_policy::decide` and lets only allowed requests through.
//! A denial becomes [`AccessDeniedError`], which [`crate::rescue`] answers with 403.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use http::Request;
use portvagt_policy::{
    Decision, DenyReason, FhirRequest, Interaction, RuleSet, decide, decide_with_rules,
};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::auth::Principal;
use crate::body::BoxError;
use crate::context::{RequestRecord, record};
use crate::metrics::Metrics;

/// The policy said no.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("access denied: {reason}")]
pub struct AccessDeniedError {
    /// Why.
    pub reason: DenyReason,
}

/// The operator rules in force; swapped whole when the rules file is reloaded.
pub type SharedRules = Arc<ArcSwapOption<RuleSet>>;

/// Enforces the policy decision.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    metrics: Arc<Metrics>,
    rules: SharedRules,
    citizen: Option<Arc<[String]>>,
}

impl AuthorizeLayer {
    /// Decides on scopes and, when there are any, the operator `rules` in force at each
    /// request; counts denials into `metrics`.
    pub fn new(metrics: Arc<Metrics>, rules: SharedRules) -> Self {
        Self {
            metrics,
            rules,
            citizen: None,
        }
    }

    /// As [`AuthorizeLayer::new`], for the citizen listener: first of all the caller must be a
    /// citizen (a patient-context token about themselves), reading or searching their audit
    /// log or one of `resource_types`; then the policy decides as everywhere.
    pub fn citizen(metrics: Arc<Metrics>, rules: SharedRules, resource_types: &[String]) -> Self {
        Self {
            metrics,
            rules,
            citizen: Some(resource_types.iter().cloned().collect()),
        }
    }
}

/// Whether the citizen listener serves this: a citizen about themselves, a read or search of
/// `AuditEvent` or of a type the operator opened.
fn citizen_may(principal: &Principal, fhir: &FhirRequest, opened: &[String]) -> bool {
    let reads = matches!(
        fhir.interaction(),
        Interaction::Read | Interaction::Vread | Interaction::SearchType
    );
    let type_open = fhir
        .resource_type()
        .is_some_and(|t| t.as_str() == "AuditEvent" || opened.iter().any(|o| o == t.as_str()));
    reads && type_open && is_the_patient(principal)
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            metrics: self.metrics.clone(),
            rules: self.rules.clone(),
            citizen: self.citizen.clone(),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    metrics: Arc<Metrics>,
    rules: SharedRules,
    citizen: Option<Arc<[String]>>,
}

impl<S, B, R> Service<Request<B>> for Authorize<S>
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
        // Both are put there by earlier layers; without them there is nothing to allow.
        let decision = match (
            request.extensions().get::<Arc<Principal>>(),
            request.extensions().get::<Arc<FhirRequest>>(),
        ) {
            (Some(principal), Some(fhir))
                if self
                    .citizen
                    .as_ref()
                    .is_some_and(|opened| !citizen_may(principal, fhir, opened)) =>
            {
                Decision::Deny {
                    reason: DenyReason::CitizenListener,
                }
            }
            (Some(principal), Some(fhir)) => match self.rules.load().as_deref() {
                None => decide(principal.policy_subject(), fhir),
                Some(rules) => {
                    decide_with_rules(principal.policy_subject(), &principal.caller(), rules, fhir)
                }
            },
            _ => Decision::Deny {
                reason: DenyReason::InsufficientScope,
            },
        };
        // A patient-context scope opens the audit log only to the citizen it is about: the user
        // must BE that patient (`fhirUser`), not a practitioner launched in their context.
        let decision = match (decision, request.extensions().get::<Arc<Principal>>()) {
            (Decision::Allow { granted_by, .. }, Some(principal))
                if granted_by.starts_with("patient/")
                    && request
                        .extensions()
                        .get::<Arc<FhirRequest>>()
                        .and_then(|fhir| fhir.resource_type())
                        .is_some_and(|t| t.as_str() == "AuditEvent")
                    && !is_the_patient(principal) =>
            {
                Decision::Deny {
                    reason: DenyReason::AuditLogRestricted,
                }
            }
            (decision, _) => decision,
        };
        match &decision {
            Decision::Allow { .. } => record(&request, |fields| fields.decision = Some("allow")),
            Decision::Deny { reason } => {
                let refused = refuse(
                    &self.metrics,
                    *reason,
                    request.extensions().get::<RequestRecord>(),
                    None,
                );
                return Box::pin(std::future::ready(Err(refused)));
            }
        }
        request.extensions_mut().insert(decision);
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move { inner.call(request).await })
    }
}

/// A refusal, booked in the one way every refusal is: recorded on the request (decision,
/// reason, and the patients whose logs must show the attempt), counted in
/// `portvagt_access_denied_total`, and returned as the error the rescue layer answers.
pub(crate) fn refuse(
    metrics: &Metrics,
    reason: DenyReason,
    record: Option<&RequestRecord>,
    patients: Option<&[String]>,
) -> BoxError {
    if let Some(record) = record {
        let mut fields = record.fields();
        fields.decision = Some("deny");
        fields.reason = Some(reason.code());
        if let Some(patients) = patients {
            fields.patients = patients.to_vec();
        }
    }
    count_refusal(metrics, reason);
    AccessDeniedError { reason }.into()
}

/// Counts a refusal in `portvagt_access_denied_total` (batch entries refused one by one are
/// counted without failing their request).
pub(crate) fn count_refusal(metrics: &Metrics, reason: DenyReason) {
    metrics
        .access_denied
        .with_label_values(&[reason.code()])
        .inc();
}

/// Whether the caller is the patient in their own context: `fhirUser` names that Patient
/// (relative or absolute).
fn is_the_patient(principal: &Principal) -> bool {
    match (principal.fhir_user(), principal.patient()) {
        (Some(user), Some(patient)) => {
            let own = format!("Patient/{patient}");
            user == own || user.ends_with(&format!("/{own}"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denied(metrics: &Metrics, reason: DenyReason) -> u64 {
        metrics
            .access_denied
            .with_label_values(&[reason.code()])
            .get()
    }

    #[test]
    fn a_refusal_is_recorded_counted_and_answered_one_way() {
        let metrics = Metrics::new();
        let record = RequestRecord::default();
        let patients = ["pat-anne".to_owned()];
        let error = refuse(
            &metrics,
            DenyReason::ConsentBlock,
            Some(&record),
            Some(&patients),
        );
        let denied_error = error.downcast_ref::<AccessDeniedError>().unwrap();
        assert_eq!(denied_error.reason, DenyReason::ConsentBlock);
        let fields = record.fields();
        assert_eq!(fields.decision, Some("deny"));
        assert_eq!(fields.reason, Some("consent-block"));
        assert_eq!(fields.patients, patients);
        drop(fields);
        assert_eq!(denied(&metrics, DenyReason::ConsentBlock), 1);
        // Without a record (nothing to write to) it is still counted and answered.
        let error = refuse(&metrics, DenyReason::InsufficientScope, None, None);
        assert!(error.is::<AccessDeniedError>());
        assert_eq!(denied(&metrics, DenyReason::InsufficientScope), 1);
        // A batch entry refused alone is counted, its request not failed.
        count_refusal(&metrics, DenyReason::Withheld);
        assert_eq!(denied(&metrics, DenyReason::Withheld), 1);
    }
}
