//! The access decision: SMART scopes (App Launch 2.2 §3) against the classified request, with
//! the Patient compartment for patient-context scopes.
//!
//! [`decide`] cannot fail. It answers [`Decision::Allow`] naming the scope that granted the
//! access and the [`Obligations`] the gateway must carry out (narrow the search, check the
//! response against the compartment, per-entry answers of a batch), or [`Decision::Deny`] with
//! a stable reason. Deny is the default: a request is allowed only when some scope provably
//! covers it.

use std::fmt;

use crate::patient_rules;
use crate::request::{BundleKind, FhirRequest, Interaction, RequestBody, parse_form};
use crate::resource_type::ResourceType;
use crate::rules::{Caller, RuleSet, RuleVerdict};
use crate::scope::{Permissions, Scope, ScopeContext, ScopeSet};

/// What policy needs to know about the caller, borrowed from the verified principal.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The caller's resource scopes.
    pub scopes: &'a ScopeSet,
    /// The `patient` launch context of the token, if any.
    pub patient: Option<&'a str>,
}

/// What the gateway must do for an allowed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Obligations {
    /// Every resource in the answer must be in this patient's compartment (or shared reference
    /// data); others are removed from Bundles, and a single one makes the answer a 403.
    pub compartment: Option<String>,
    /// Search parameters to add to the forwarded request, narrowing it (to the patient, or to a
    /// v2 granular scope's restriction). FHIR ANDs repeated parameters, so adding never widens.
    pub add_params: Vec<(String, String)>,
    /// For a batch or transaction: the decision for each entry, in order.
    pub entries: Vec<Decision>,
    /// A v2 granular scope's restriction (`category=laboratory`): every resource in the answer
    /// must satisfy it, else it is removed (Bundles) or the answer is a 403.
    pub restriction: Vec<(String, String)>,
    /// Before an update, patch or delete: read the target first; it must be in the
    /// [`Obligations::compartment`] (or not exist), and the write is bound to the version read.
    pub verify_target: bool,
}

/// The outcome of policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed, under obligations.
    Allow {
        /// The scope that granted it, as written in the token (empty for open interactions and
        /// for batches, whose entries carry their own).
        granted_by: String,
        /// What the gateway must do.
        obligations: Obligations,
    },
    /// The request is refused.
    Deny {
        /// Why.
        reason: DenyReason,
    },
}

impl Decision {
    /// Whether this is an allow.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The deny reason, if this is a deny.
    pub fn deny_reason(&self) -> Option<DenyReason> {
        match self {
            Decision::Allow { .. } => None,
            Decision::Deny { reason } => Some(*reason),
        }
    }

    fn allow(scope: &Scope, obligations: Obligations) -> Decision {
        Decision::Allow {
            granted_by: scope.as_str().to_owned(),
            obligations,
        }
    }
}

/// Why a request was denied. [`DenyReason::code`] is stable for integrators and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No scope grants this interaction on this resource type.
    InsufficientScope,
    /// Only patient-context scopes would grant it, but the token has no `patient` claim.
    NoPatientContext,
    /// The request reaches outside the patient compartment, or cannot be kept inside it.
    OutsideCompartment,
    /// A write under a patient-context scope whose target the gateway cannot prove to be the
    /// patient's (update, patch, delete, conditional writes).
    WriteNotVerifiable,
    /// A v2 granular scope (`?param=...`) would grant it, but only searches can be narrowed to
    /// the restriction.
    GranularScopeUnsupported,
    /// An operation other than `$everything`, or a batch/transaction without a readable body.
    UnsupportedInteraction,
    /// The search would return or test resources of other types (`_include`, `_revinclude`,
    /// `_has`, chained parameters), and only a scope on every type (`*`) covers that.
    SearchReachesOtherTypes,
    /// The answer held resources outside a v2 granular scope's restriction.
    OutsideGranularScope,
    /// An operator rule with `effect = "deny"` matched.
    DeniedByRule,
    /// Operator rules are in force and none allows this.
    NoRuleAllows,
    /// The patient has blocked this professional or organisation (negative consent).
    ConsentBlock,
    /// A consent block applies; purpose EMERGENCY was claimed but no break-the-glass reason
    /// was given.
    BreakGlassReasonRequired,
    /// The audit log: citizens read their own (patient-context scopes); anyone else only where
    /// an operator rule names `AuditEvent`; nobody writes it through the gateway.
    AuditLogRestricted,
    /// A count-only search (`_summary=count`, `_count=0`) not bounded to patients it names,
    /// while citizens' blocks are enforced: its number would count what blocks withhold.
    CountNotPinned,
    /// `_elements` or a `_summary` other than `count`/`false` would hide the references that
    /// tell whose data an answer holds, while consent or the audit trail must know.
    ReferencesHidden,
    /// A batch entry that reached a blocked patient's data without naming her: answered as if
    /// nothing were there (`404 not-found`).
    Withheld,
    /// The citizen listener (no client certificate) serves citizens only: a patient-context
    /// token about the citizen themselves, reading their own audit log or what the operator
    /// opened there, and nothing else.
    CitizenListener,
}

impl DenyReason {
    /// The stable code used in OperationOutcomes, logs and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::InsufficientScope => "insufficient-scope",
            DenyReason::NoPatientContext => "no-patient-context",
            DenyReason::OutsideCompartment => "outside-compartment",
            DenyReason::WriteNotVerifiable => "write-not-verifiable",
            DenyReason::GranularScopeUnsupported => "granular-scope-unsupported",
            DenyReason::UnsupportedInteraction => "unsupported-interaction",
            DenyReason::SearchReachesOtherTypes => "search-reaches-other-types",
            DenyReason::OutsideGranularScope => "outside-granular-scope",
            DenyReason::DeniedByRule => "denied-by-rule",
            DenyReason::NoRuleAllows => "no-rule-allows",
            DenyReason::ConsentBlock => "consent-block",
            DenyReason::BreakGlassReasonRequired => "break-glass-reason-required",
            DenyReason::AuditLogRestricted => "audit-log-restricted",
            DenyReason::CountNotPinned => "count-not-pinned",
            DenyReason::ReferencesHidden => "references-hidden",
            DenyReason::Withheld => "not-found",
            DenyReason::CitizenListener => "citizen-listener",
        }
    }

    /// Every reason, for documentation and metric pre-registration.
    pub const ALL: [DenyReason; 17] = [
        DenyReason::InsufficientScope,
        DenyReason::NoPatientContext,
        DenyReason::OutsideCompartment,
        DenyReason::WriteNotVerifiable,
        DenyReason::GranularScopeUnsupported,
        DenyReason::UnsupportedInteraction,
        DenyReason::SearchReachesOtherTypes,
        DenyReason::OutsideGranularScope,
        DenyReason::DeniedByRule,
        DenyReason::NoRuleAllows,
        DenyReason::ConsentBlock,
        DenyReason::BreakGlassReasonRequired,
        DenyReason::AuditLogRestricted,
        DenyReason::CountNotPinned,
        DenyReason::ReferencesHidden,
        DenyReason::Withheld,
        DenyReason::CitizenListener,
    ];
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Parameters that make a search return or test resources of other types.
const OTHER_TYPE_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_has",
    "_contained",
    "_containedType",
];

/// Decides whether `subject` may perform `request`, on scopes alone.
pub fn decide(subject: Subject<'_>, request: &FhirRequest) -> Decision {
    decide_inner(subject, None, request)
}

/// Decides on scopes, then on the operator `rules` for `caller` (see [`crate::rules`]).
pub fn decide_with_rules(
    subject: Subject<'_>,
    caller: &Caller<'_>,
    rules: &RuleSet,
    request: &FhirRequest,
) -> Decision {
    decide_inner(subject, Some((caller, rules)), request)
}

fn decide_inner(
    subject: Subject<'_>,
    rules: Option<(&Caller<'_>, &RuleSet)>,
    request: &FhirRequest,
) -> Decision {
    let (resource_type, needed) = match requirement(request) {
        Requirement::Open => {
            return Decision::Allow {
                granted_by: String::new(),
                obligations: Obligations::default(),
            };
        }
        Requirement::Bundle => return decide_bundle(subject, rules, request),
        Requirement::Refused(reason) => return Decision::Deny { reason },
        Requirement::Scope(resource_type, needed) => (resource_type, needed),
    };
    let mut best = DenyReason::InsufficientScope;
    // User and system scopes first: when one grants the request, a patient-context scope beside
    // it must not narrow what it grants.
    let by_breadth = subject
        .scopes
        .iter()
        .filter(|scope| scope.context() != ScopeContext::Patient)
        .chain(
            subject
                .scopes
                .iter()
                .filter(|scope| scope.context() == ScopeContext::Patient),
        );
    for scope in by_breadth {
        if !scope.covers(resource_type, needed) {
            continue;
        }
        let audit_log = resource_type.is_some_and(|t| t.as_str() == "AuditEvent");
        if audit_log
            && !Permissions::READ
                .union(Permissions::SEARCH)
                .contains(needed)
        {
            return Decision::Deny {
                reason: DenyReason::AuditLogRestricted,
            };
        }
        let verdict = match scope.context() {
            // Other people's access logs are not a user's or a system's to read, whatever the
            // scope, unless the operator named the audit log in a rule.
            ScopeContext::User | ScopeContext::System
                if audit_log
                    && !rules.is_some_and(|(caller, rules)| {
                        rules.names_type(caller, scope.context(), request)
                    }) =>
            {
                Err(DenyReason::AuditLogRestricted)
            }
            ScopeContext::User | ScopeContext::System => user_rules(request, scope),
            ScopeContext::Patient => match subject.patient {
                None => Err(DenyReason::NoPatientContext),
                Some(patient) => patient_rules::check(request, scope, patient),
            },
        };
        let verdict = verdict.and_then(|obligations| match rules {
            None => Ok(obligations),
            Some((caller, rules)) => match rules.evaluate(caller, scope.context(), request) {
                RuleVerdict::Allowed => Ok(obligations),
                RuleVerdict::Denied => Err(DenyReason::DeniedByRule),
                RuleVerdict::NotAllowed => Err(DenyReason::NoRuleAllows),
            },
        });
        match verdict {
            Ok(obligations) => return Decision::allow(scope, obligations),
            Err(reason) => best = reason,
        }
    }
    Decision::Deny { reason: best }
}

enum Requirement {
    /// Anyone authenticated (capabilities).
    Open,
    /// Decided entry by entry.
    Bundle,
    /// Never, whatever the scopes.
    Refused(DenyReason),
    /// A scope covering this type (`None`: only `*` scopes) with these permissions.
    Scope(Option<ResourceType>, Permissions),
}

/// What a scope must grant for the interaction. SMART v2: `c` create, `r` read/vread,
/// `u` update/patch, `d` delete, `s` search and history; conditional writes search first.
fn requirement(request: &FhirRequest) -> Requirement {
    use Permissions as P;
    let t = request.resource_type();
    let needed = match request.interaction() {
        Interaction::Capabilities => return Requirement::Open,
        Interaction::BatchOrTransaction => return Requirement::Bundle,
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => P::READ,
        Interaction::SearchType | Interaction::SearchCompartment | Interaction::SearchSystem => {
            P::SEARCH
        }
        Interaction::HistoryType | Interaction::HistorySystem => P::READ.union(P::SEARCH),
        // A conditional create answers with the existing match: it is a search too.
        Interaction::Create if request.if_none_exist().is_some() => {
            P::CREATE.union(P::READ).union(P::SEARCH)
        }
        Interaction::Create => P::CREATE,
        Interaction::Update | Interaction::Patch => P::UPDATE,
        // No match: a conditional update creates.
        Interaction::ConditionalUpdate => P::CREATE.union(P::UPDATE).union(P::SEARCH),
        Interaction::ConditionalPatch => P::UPDATE.union(P::SEARCH),
        Interaction::Delete => P::DELETE,
        Interaction::ConditionalDelete => P::DELETE.union(P::SEARCH),
        // $everything reads the whole compartment: only a scope on every type covers it.
        Interaction::Operation if is_everything(request) => {
            return Requirement::Scope(None, P::READ.union(P::SEARCH));
        }
        Interaction::Operation => return Requirement::Refused(DenyReason::UnsupportedInteraction),
    };
    Requirement::Scope(t, needed)
}

/// `Patient/[id]/$everything` (R4 Patient-everything).
pub(crate) fn is_everything(request: &FhirRequest) -> bool {
    request.operation() == Some("everything")
        && request.resource_type().map(ResourceType::as_str) == Some("Patient")
        && request.id().is_some()
}

/// `user/` and `system/` scopes: type and permission suffice, but a search reaching other types
/// needs `*`, and a granular scope can only narrow searches.
fn user_rules(request: &FhirRequest, scope: &Scope) -> Result<Obligations, DenyReason> {
    if reaches_other_types(request) && !scope.covers_every_type() {
        return Err(DenyReason::SearchReachesOtherTypes);
    }
    let granular = granular(request, scope)?;
    Ok(Obligations {
        add_params: granular.add_params,
        restriction: granular.restriction,
        ..Obligations::default()
    })
}

/// A v2 granular scope (`user/Observation.rs?category=laboratory`, SMART 2.2 §3.1.2): searches
/// are narrowed by its restriction, and the answers of searches and reads must satisfy it.
/// Anything else (writes, includes) it cannot vouch for.
pub(crate) fn granular(request: &FhirRequest, scope: &Scope) -> Result<Granular, DenyReason> {
    let Some(query) = scope.query() else {
        return Ok(Granular::default());
    };
    let restriction = parse_form(query).map_err(|_| DenyReason::GranularScopeUnsupported)?;
    match request.interaction() {
        Interaction::SearchType | Interaction::SearchCompartment
            if !reaches_other_types(request) =>
        {
            Ok(Granular {
                add_params: restriction.clone(),
                restriction,
            })
        }
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => Ok(Granular {
            add_params: Vec::new(),
            restriction,
        }),
        _ => Err(DenyReason::GranularScopeUnsupported),
    }
}

/// What a granular scope adds to an allow.
#[derive(Debug, Default)]
pub(crate) struct Granular {
    pub(crate) add_params: Vec<(String, String)>,
    pub(crate) restriction: Vec<(String, String)>,
}

/// Whether the request's parameters (or its conditional-create search) reach other types.
pub(crate) fn reaches_other_types(request: &FhirRequest) -> bool {
    let conditional = request.if_none_exist().unwrap_or_default();
    request.params().iter().chain(conditional).any(|(name, _)| {
        let base = name.split(':').next().unwrap_or(name);
        OTHER_TYPE_PARAMS.contains(&base) || name.contains('.')
    })
}

/// Batch and transaction (R4 §3.1.0.11): each entry is decided as a request of its own. A
/// transaction with any denied entry is denied as a whole; a batch is allowed with per-entry
/// decisions, and the gateway answers denied entries itself.
fn decide_bundle(
    subject: Subject<'_>,
    rules: Option<(&Caller<'_>, &RuleSet)>,
    request: &FhirRequest,
) -> Decision {
    let Some(RequestBody::Bundle { kind, entries }) = request.body() else {
        return Decision::Deny {
            reason: DenyReason::UnsupportedInteraction,
        };
    };
    if let Some((caller, rules)) = rules
        && rules.denies_bundle(caller, request)
    {
        return Decision::Deny {
            reason: DenyReason::DeniedByRule,
        };
    }
    let decisions: Vec<Decision> = entries
        .iter()
        .map(|entry| match decide_inner(subject, rules, entry) {
            // The gateway reads write targets first only for single requests, not inside Bundles.
            Decision::Allow { obligations, .. } if obligations.verify_target => Decision::Deny {
                reason: DenyReason::WriteNotVerifiable,
            },
            decision => decision,
        })
        .collect();
    if *kind == BundleKind::Transaction
        && let Some(reason) = decisions.iter().find_map(Decision::deny_reason)
    {
        return Decision::Deny { reason };
    }
    Decision::Allow {
        granted_by: String::new(),
        obligations: Obligations {
            entries: decisions,
            ..Obligations::default()
        },
    }
}
