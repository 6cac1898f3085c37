//! Authorization: asks `portvagt_policy::decide` and lets only allowed requests through.
//! A denial becomes [`AccessDeniedError`], which [`crate::layers::rescue`] answers with 403.
//!
//! This layer decides nothing itself: who the caller is, which listener they came through and
//! the operator's rules go to the policy, and its decision (with the obligations the proxy
//! carries out) goes on the request. It may not add rules of its own.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;
use portvagt_policy::{Channel, Decision, DenyReason, FhirRequest, decide, decide_with_rules};
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::auth::Principal;
use crate::body::BoxError;
use crate::context::{RequestRecord, record};
pub use crate::decisions::SharedRules;
use crate::decisions::{Decisions, Observed};
use crate::layers::request_id::RequestId;
use crate::metrics::Metrics;
use crate::trace::{Phase, Traced};

/// The policy said no.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("access denied: {reason}")]
pub struct AccessDeniedError {
    /// Why.
    pub reason: DenyReason,
}

/// Enforces the policy decision.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    metrics: Arc<Metrics>,
    rules: SharedRules,
    citizen: Option<CitizenChannel>,
    decisions: Option<Arc<Decisions>>,
}

impl AuthorizeLayer {
    /// Decides on scopes and, when there are any, the operator `rules` in force at each
    /// request; counts denials into `metrics`.
    pub fn new(metrics: Arc<Metrics>, rules: SharedRules) -> Self {
        Self {
            metrics,
            rules,
            citizen: None,
            decisions: None,
        }
    }

    /// Every decision also shown to `decisions`: the decision log, the shadow rules.
    pub fn with_decisions(self, decisions: Arc<Decisions>) -> Self {
        Self {
            decisions: Some(decisions),
            ..self
        }
    }

    /// As [`AuthorizeLayer::new`], for the citizen listener ([`Channel::Citizen`]): the policy
    /// lets through only a citizen about themselves, reading or searching their audit log or
    /// one of `resource_types`, and with `blocks` making or lifting their own blocks.
    pub fn citizen(
        metrics: Arc<Metrics>,
        rules: SharedRules,
        resource_types: &[String],
        blocks: bool,
    ) -> Self {
        Self {
            metrics,
            rules,
            citizen: Some(CitizenChannel {
                opened: resource_types.iter().cloned().collect(),
                blocks,
            }),
            decisions: None,
        }
    }
}

/// What the citizen listener serves besides a citizen's own audit log.
#[derive(Debug, Clone)]
struct CitizenChannel {
    opened: Arc<[String]>,
    blocks: bool,
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            metrics: self.metrics.clone(),
            rules: self.rules.clone(),
            citizen: self.citizen.clone(),
            decisions: self.decisions.clone(),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    metrics: Arc<Metrics>,
    rules: SharedRules,
    citizen: Option<CitizenChannel>,
    decisions: Option<Arc<Decisions>>,
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
        let channel = match &self.citizen {
            Some(citizen) => Channel::Citizen {
                opened: &citizen.opened,
                blocks: citizen.blocks,
            },
            None => Channel::Professional,
        };
        let phase = Phase::start(request.extensions().get::<Traced>(), "portvagt.decide");
        let decision = match (
            request.extensions().get::<Arc<Principal>>(),
            request.extensions().get::<Arc<FhirRequest>>(),
        ) {
            (Some(principal), Some(fhir)) => {
                let subject = principal.policy_subject(channel);
                let rules = self.rules.load();
                let decision = match rules.as_deref() {
                    None => decide(subject, fhir),
                    Some(rules) => decide_with_rules(subject, &principal.caller(), rules, fhir),
                };
                if let Some(decisions) = self.decisions.as_ref().filter(|d| d.active()) {
                    let request_id = request.extensions().get::<RequestId>();
                    let observed = Observed {
                        request_id: request_id.map_or("", RequestId::as_str),
                        method: request.method().as_str(),
                        principal,
                        channel,
                        request: fhir,
                        rules: rules.as_deref(),
                    };
                    decisions.observe(observed, &decision);
                }
                decision
            }
            _ => Decision::Deny {
                reason: DenyReason::InsufficientScope,
            },
        };
        phase.end(!decision.is_allow());
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

#[cfg(test)]
mod tests {
    use portvagt_policy::{ScopeSet, classify};
    use tower::ServiceExt as _;

    use super::*;
    use crate::auth::principal::Identity;
    use crate::tls::PeerIdentity;

    fn principal(scopes: &str, patient: Option<&str>, fhir_user: Option<&str>) -> Principal {
        Principal {
            subject: "sub".into(),
            issuer: "iss".into(),
            client_id: None,
            jti: None,
            scopes: ScopeSet::parse(scopes),
            patient: patient.map(str::to_owned),
            fhir_user: fhir_user.map(str::to_owned),
            certificate_bound: false,
            expires_at: u64::MAX,
            roles: Vec::new(),
            purpose_of_use: None,
            audiences: Vec::new(),
            identity: Identity::default(),
            peer: Arc::new(PeerIdentity::without_certificate()),
        }
    }

    /// What the layer lets through: the decision it put on the request, or the refusal's reason.
    async fn through(
        layer: &AuthorizeLayer,
        principal: Principal,
        method: &str,
        url: &str,
    ) -> Result<Decision, DenyReason> {
        let (path, query) = url
            .split_once('?')
            .map_or((url, None), |(p, q)| (p, Some(q)));
        let mut request = Request::builder().body(()).unwrap();
        request.extensions_mut().insert(Arc::new(principal));
        request
            .extensions_mut()
            .insert(Arc::new(classify(method, path, query).unwrap()));
        let inner = tower::service_fn(|request: Request<()>| async move {
            Ok::<_, BoxError>(request.extensions().get::<Decision>().cloned())
        });
        match layer.layer(inner).oneshot(request).await {
            Ok(decision) => Ok(decision.expect("an allowed request carries its decision")),
            Err(error) => Err(error.downcast_ref::<AccessDeniedError>().unwrap().reason),
        }
    }

    #[tokio::test]
    async fn the_layer_asks_the_policy_with_the_listener_and_the_user_and_carries_its_obligations()
    {
        let rules: SharedRules = Arc::default();
        let citizen = AuthorizeLayer::citizen(
            Arc::new(Metrics::new()),
            rules.clone(),
            &["Observation".into()],
            false,
        );
        let mtls = AuthorizeLayer::new(Arc::new(Metrics::new()), rules);
        let anne = || principal("patient/*.rs", Some("pat-anne"), Some("Patient/pat-anne"));
        let nurse = || {
            principal(
                "patient/*.rs",
                Some("pat-anne"),
                Some("Practitioner/prac-ns363"),
            )
        };

        // Anne reads her own log on the citizen listener: in her view.
        let Ok(Decision::Allow { obligations, .. }) =
            through(&citizen, anne(), "GET", "AuditEvent").await
        else {
            panic!("Anne reads her own log")
        };
        assert!(obligations.citizen_view);
        // What the operator did not open, and any write, the citizen listener refuses.
        assert_eq!(
            through(&citizen, anne(), "GET", "Condition?code=x").await,
            Err(DenyReason::CitizenListener)
        );
        assert_eq!(
            through(&citizen, anne(), "POST", "Observation").await,
            Err(DenyReason::CitizenListener)
        );
        // A practitioner launched in Anne's context is not Anne: not on the citizen listener,
        // and not her log anywhere.
        assert_eq!(
            through(&citizen, nurse(), "GET", "Observation?code=x").await,
            Err(DenyReason::CitizenListener)
        );
        assert_eq!(
            through(&mtls, nurse(), "GET", "AuditEvent").await,
            Err(DenyReason::AuditLogRestricted)
        );
        // On the mTLS listener the nurse reads Anne's data, narrowed to her.
        let Ok(Decision::Allow { obligations, .. }) =
            through(&mtls, nurse(), "GET", "Condition?code=x").await
        else {
            panic!("the nurse reads Anne's conditions")
        };
        assert_eq!(obligations.compartment.as_deref(), Some("pat-anne"));
        assert!(!obligations.citizen_view);
    }

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
