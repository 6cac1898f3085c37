//! What a decision is made of: [`Decision`] (allow with [`Obligations`], or deny with a
//! [`DenyReason`] whose code is stable for integrators and metrics). The values only; how they
//! are reached is [`crate::decision`].

use std::fmt;

use crate::scope::Scope;

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
    /// A citizen reading their own audit log: searches newest first (unless the request sorts),
    /// and every AuditEvent answered in the citizen's view (who, from where, why; no network
    /// or system details).
    pub citizen_view: bool,
    /// Elements to add to the request's `_elements` (the references that say whose data the
    /// answer is), and to take out of the answer again once every check has read them.
    pub add_elements: Vec<String>,
    /// The request is not for `AuditEvent` (whose reading the audit-log rules decided), yet its
    /// answer may hold AuditEvents (`_include`/`_revinclude`, a compartment or system search,
    /// system history, an operation such as `$everything`): every AuditEvent in it is taken
    /// out (or the answer refused, if it is one), so the audit-log rules hold for what is
    /// returned, not only for what was asked.
    pub withhold_audit_events: bool,
    /// The answer's `total` goes: it would count matches a check takes out (a patient's search
    /// pinned by a parameter that only names her, such as `performer`; AuditEvents among a
    /// system search's matches).
    pub hide_total: bool,
    /// A citizen making or lifting her own block on the citizen listener: the gateway answers
    /// it itself (checks the one shape, writes the Consent it builds), and nothing she sent is
    /// forwarded.
    pub citizen_block: bool,
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

    /// `allow`, or the deny reason's code: what a decision log and a metric label show.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { reason } => reason.code(),
        }
    }

    /// Whether `other` reaches the same verdict: both deny for the same reason, or both allow
    /// through the same scope with the same narrowing (compartment, added parameters, granular
    /// restriction: rules are met per scope context, so one rule set may let a request through
    /// a broad scope that the other lets through only a patient's), and for a batch the same
    /// verdict entry by entry. A transaction denied by both for the same reason agrees, whichever
    /// entry each refused.
    pub fn same_verdict(&self, other: &Decision) -> bool {
        match (self, other) {
            (
                Decision::Allow {
                    granted_by: my_scope,
                    obligations: mine,
                },
                Decision::Allow {
                    granted_by: their_scope,
                    obligations: theirs,
                },
            ) => {
                my_scope == their_scope
                    && mine.compartment == theirs.compartment
                    && mine.add_params == theirs.add_params
                    && mine.restriction == theirs.restriction
                    && mine.entries.len() == theirs.entries.len()
                    && mine
                        .entries
                        .iter()
                        .zip(&theirs.entries)
                        .all(|(mine, theirs)| mine.same_verdict(theirs))
            }
            (Decision::Deny { reason: mine }, Decision::Deny { reason: theirs }) => mine == theirs,
            _ => false,
        }
    }

    pub(crate) fn allow(scope: &Scope, obligations: Obligations) -> Decision {
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
    /// The caller's role needs a treatment relationship with the patient, and none was found
    /// (værdispring: purpose EMERGENCY with a reason lets the access through, followed up).
    RelationshipRequired,
    /// The access would take one professional past the mass-lookup threshold of distinct
    /// patients in its window.
    TooManyPatients,
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
    /// A write that would make a Consent look like a citizen's own block (its tag): only the
    /// citizen listener's gateway writes those.
    CitizenBlockReserved,
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
            DenyReason::RelationshipRequired => "relationship-required",
            DenyReason::TooManyPatients => "too-many-patients",
            DenyReason::BreakGlassReasonRequired => "break-glass-reason-required",
            DenyReason::AuditLogRestricted => "audit-log-restricted",
            DenyReason::CountNotPinned => "count-not-pinned",
            DenyReason::ReferencesHidden => "references-hidden",
            DenyReason::Withheld => "not-found",
            DenyReason::CitizenListener => "citizen-listener",
            DenyReason::CitizenBlockReserved => "citizen-block-reserved",
        }
    }

    /// Every reason, for documentation and metric pre-registration.
    pub const ALL: [DenyReason; 20] = [
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
        DenyReason::RelationshipRequired,
        DenyReason::TooManyPatients,
        DenyReason::BreakGlassReasonRequired,
        DenyReason::AuditLogRestricted,
        DenyReason::CountNotPinned,
        DenyReason::ReferencesHidden,
        DenyReason::Withheld,
        DenyReason::CitizenListener,
        DenyReason::CitizenBlockReserved,
    ];
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(entries: Vec<Decision>) -> Decision {
        Decision::Allow {
            granted_by: "user/*.rs".into(),
            obligations: Obligations {
                entries,
                ..Obligations::default()
            },
        }
    }

    fn deny(reason: DenyReason) -> Decision {
        Decision::Deny { reason }
    }

    #[test]
    fn the_same_verdict_is_the_same_outcome_entry_by_entry() {
        let narrowed = Decision::Allow {
            granted_by: "patient/*.rs".into(),
            obligations: Obligations {
                compartment: Some("pat-anne".into()),
                ..Obligations::default()
            },
        };
        assert!(
            !allow(vec![]).same_verdict(&narrowed),
            "a broad scope against a patient's"
        );
        assert!(narrowed.same_verdict(&narrowed.clone()));
        assert!(deny(DenyReason::NoRuleAllows).same_verdict(&deny(DenyReason::NoRuleAllows)));
        assert!(!deny(DenyReason::NoRuleAllows).same_verdict(&deny(DenyReason::DeniedByRule)));
        assert!(!allow(vec![]).same_verdict(&deny(DenyReason::DeniedByRule)));
        assert!(!deny(DenyReason::DeniedByRule).same_verdict(&allow(vec![])));
        let batch = allow(vec![allow(vec![]), deny(DenyReason::NoRuleAllows)]);
        assert!(batch.same_verdict(&allow(vec![allow(vec![]), deny(DenyReason::NoRuleAllows)])));
        assert!(!batch.same_verdict(&allow(vec![allow(vec![]), allow(vec![])])));
        assert!(!batch.same_verdict(&allow(vec![allow(vec![])])));
        assert_eq!(batch.outcome(), "allow");
        assert_eq!(deny(DenyReason::DeniedByRule).outcome(), "denied-by-rule");
    }
}
