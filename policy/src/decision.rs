//! The access decision: SMART scopes against the classified request.
//!
//! `decide` cannot fail. It answers [`Decision::Allow`] naming the scope that granted the access,
//! or [`Decision::Deny`] with a stable reason. Deny is the default: a request is allowed only
//! when some scope provably covers it.
//!
//! Patient-context scopes (`patient/...`) are limited, in this first cut, to what the request
//! itself proves to be inside the token's patient compartment: reading the patient's own
//! `Patient` resource, and type searches pinned to the patient with exactly one `patient`
//! parameter and nothing that could pull in other resources (`_include`, `_revinclude`, `_has`,
//! chained parameters). Everything else a patient-context scope might cover is denied until the
//! compartment engine checks responses.

use std::fmt;

use crate::request::{FhirRequest, Interaction};
use crate::resource_type::ResourceType;
use crate::scope::{Permissions, ScopeContext, ScopeSet};

/// What policy needs to know about the caller, borrowed from the verified principal.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The caller's resource scopes.
    pub scopes: &'a ScopeSet,
    /// The `patient` launch context of the token, if any.
    pub patient: Option<&'a str>,
}

/// The outcome of policy evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request may proceed.
    Allow {
        /// The scope that granted it, as written in the token (empty for open interactions).
        granted_by: String,
    },
    /// The request is refused.
    Deny {
        /// Why.
        reason: DenyReason,
    },
}

/// Why a request was denied. [`DenyReason::code`] is stable for integrators and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// No scope grants this interaction on this resource type.
    InsufficientScope,
    /// Only patient-context scopes would grant it, but the token has no `patient` claim.
    NoPatientContext,
    /// The request reaches outside the patient compartment, or cannot be shown to stay inside.
    OutsideCompartment,
    /// A v2 granular scope (`?param=...`) would grant it, but granular restrictions are not
    /// enforced yet, so it grants nothing.
    GranularScopeUnsupported,
    /// Batch, transaction and operations are not authorised yet.
    UnsupportedInteraction,
    /// The search would return or test resources of other types (`_include`, `_revinclude`,
    /// `_has`, chained parameters), and only a scope on every type (`*`) covers that.
    SearchReachesOtherTypes,
}

impl DenyReason {
    /// The stable code used in OperationOutcomes, logs and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            DenyReason::InsufficientScope => "insufficient-scope",
            DenyReason::NoPatientContext => "no-patient-context",
            DenyReason::OutsideCompartment => "outside-compartment",
            DenyReason::GranularScopeUnsupported => "granular-scope-unsupported",
            DenyReason::UnsupportedInteraction => "unsupported-interaction",
            DenyReason::SearchReachesOtherTypes => "search-reaches-other-types",
        }
    }
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

/// The only `_` parameters a patient-pinned search may carry: they shape the result, they do not
/// widen it.
const PATIENT_SAFE_RESULT_PARAMS: &[&str] = &[
    "_count",
    "_sort",
    "_summary",
    "_elements",
    "_total",
    "_lastUpdated",
    "_format",
];

/// Resource types whose `patient` search parameter is their Patient-compartment link (R4
/// CompartmentDefinition "patient"), for the first-cut patient-pinned search rule.
const PATIENT_PARAM_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "ClinicalImpression",
    "Condition",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "ImagingStudy",
    "Immunization",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "NutritionOrder",
    "Observation",
    "Procedure",
    "QuestionnaireResponse",
    "RiskAssessment",
    "ServiceRequest",
    "Specimen",
];

/// Decides whether `subject` may perform `request`.
pub fn decide(subject: Subject<'_>, request: &FhirRequest) -> Decision {
    let needed = match request.interaction() {
        Interaction::Capabilities => {
            return Decision::Allow {
                granted_by: String::new(),
            };
        }
        Interaction::Read | Interaction::Vread => Permissions::READ,
        Interaction::SearchType | Interaction::SearchSystem => Permissions::SEARCH,
        Interaction::HistoryInstance => Permissions::READ,
        Interaction::HistoryType | Interaction::HistorySystem => {
            Permissions::READ.union(Permissions::SEARCH)
        }
        // A conditional create answers with the existing match: it is a search too.
        Interaction::Create if request.if_none_exist().is_some() => Permissions::CREATE
            .union(Permissions::READ)
            .union(Permissions::SEARCH),
        Interaction::Create => Permissions::CREATE,
        Interaction::Update | Interaction::Patch => Permissions::UPDATE,
        Interaction::Delete => Permissions::DELETE,
        Interaction::BatchOrTransaction | Interaction::Operation => {
            return deny(DenyReason::UnsupportedInteraction);
        }
    };
    let resource_type = request.resource_type();
    let reaches_other_types = reaches_other_types(request);
    let mut best = DenyReason::InsufficientScope;
    for scope in subject.scopes.iter() {
        if !scope.covers(resource_type, needed) {
            continue;
        }
        if scope.query().is_some() {
            best = DenyReason::GranularScopeUnsupported;
            continue;
        }
        let verdict = match scope.context() {
            ScopeContext::User | ScopeContext::System
                if reaches_other_types && !scope.covers_every_type() =>
            {
                Err(DenyReason::SearchReachesOtherTypes)
            }
            ScopeContext::User | ScopeContext::System => Ok(()),
            ScopeContext::Patient => match subject.patient {
                None => Err(DenyReason::NoPatientContext),
                Some(patient) => inside_patient_compartment(request, patient),
            },
        };
        match verdict {
            Ok(()) => {
                return Decision::Allow {
                    granted_by: scope.as_str().to_owned(),
                };
            }
            Err(reason) => best = reason,
        }
    }
    deny(best)
}

/// Whether the request's parameters (or its conditional-create search) reach other types.
fn reaches_other_types(request: &FhirRequest) -> bool {
    let conditional = request.if_none_exist().unwrap_or_default();
    request.params().iter().chain(conditional).any(|(name, _)| {
        let base = name.split(':').next().unwrap_or(name);
        OTHER_TYPE_PARAMS.contains(&base) || name.contains('.')
    })
}

fn deny(reason: DenyReason) -> Decision {
    Decision::Deny { reason }
}

fn inside_patient_compartment(request: &FhirRequest, patient: &str) -> Result<(), DenyReason> {
    let Some(resource_type) = request.resource_type() else {
        return Err(DenyReason::OutsideCompartment);
    };
    match request.interaction() {
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance
            if resource_type.as_str() == "Patient" && request.id() == Some(patient) =>
        {
            Ok(())
        }
        Interaction::SearchType if search_pinned_to_patient(request, resource_type, patient) => {
            Ok(())
        }
        _ => Err(DenyReason::OutsideCompartment),
    }
}

fn search_pinned_to_patient(
    request: &FhirRequest,
    resource_type: ResourceType,
    patient: &str,
) -> bool {
    let pin = if resource_type.as_str() == "Patient" {
        "_id"
    } else if PATIENT_PARAM_TYPES.contains(&resource_type.as_str()) {
        "patient"
    } else {
        return false;
    };
    let mut pinned = false;
    for (name, value) in request.params() {
        let base = name.split(':').next().unwrap_or(name);
        let widening =
            base.starts_with('_') && base != pin && !PATIENT_SAFE_RESULT_PARAMS.contains(&base);
        if widening || name.contains('.') {
            return false;
        }
        if base == pin {
            let value = value
                .strip_prefix("Patient/")
                .filter(|_| pin == "patient")
                .unwrap_or(value);
            if pinned || name != pin || value != patient {
                return false;
            }
            pinned = true;
        }
    }
    pinned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::classify;

    fn decide_for(
        scopes: &str,
        patient: Option<&str>,
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> Decision {
        let scopes = ScopeSet::parse(scopes);
        let request = classify(method, path, query).unwrap();
        decide(
            Subject {
                scopes: &scopes,
                patient,
            },
            &request,
        )
    }

    fn reason(decision: Decision) -> Option<DenyReason> {
        match decision {
            Decision::Allow { .. } => None,
            Decision::Deny { reason } => Some(reason),
        }
    }

    #[test]
    fn user_and_system_scopes_grant_by_type_and_permission() {
        use DenyReason::*;
        // (scopes, method, path, query, expected denial)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<&'a str>,
            Option<DenyReason>,
        );
        let cases: &[Case<'_>] = &[
            ("user/Patient.read", "GET", "Patient/1", None, None),
            ("user/Patient.read", "GET", "Patient", Some("name=x"), None),
            (
                "user/Patient.read",
                "POST",
                "Patient",
                None,
                Some(InsufficientScope),
            ),
            ("user/Patient.write", "POST", "Patient", None, None),
            ("user/Patient.write", "DELETE", "Patient/1", None, None),
            (
                "user/Patient.rs",
                "GET",
                "Observation/1",
                None,
                Some(InsufficientScope),
            ),
            (
                "user/Observation.r",
                "GET",
                "Observation",
                None,
                Some(InsufficientScope),
            ),
            ("user/Observation.s", "GET", "Observation", None, None),
            (
                "user/Observation.s",
                "GET",
                "Observation/1",
                None,
                Some(InsufficientScope),
            ),
            ("user/Observation.u", "PATCH", "Observation/1", None, None),
            ("system/*.cruds", "GET", "", None, None),
            ("system/*.rs", "GET", "_history", None, None),
            (
                "system/Patient.rs",
                "GET",
                "",
                None,
                Some(InsufficientScope),
            ),
            ("", "GET", "Patient/1", None, Some(InsufficientScope)),
            ("", "GET", "metadata", None, None),
            (
                "system/*.cruds",
                "POST",
                "",
                None,
                Some(UnsupportedInteraction),
            ),
            (
                "system/*.cruds",
                "GET",
                "Patient/1/$everything",
                None,
                Some(UnsupportedInteraction),
            ),
            (
                "user/Observation.rs?category=laboratory",
                "GET",
                "Observation/1",
                None,
                Some(GranularScopeUnsupported),
            ),
        ];
        for (scopes, method, path, query, expected) in cases {
            assert_eq!(
                reason(decide_for(scopes, None, method, path, *query)),
                *expected,
                "{scopes} {method} {path}"
            );
        }
    }

    #[test]
    fn patient_token_reads_own_record_only() {
        let own = decide_for(
            "patient/Patient.read",
            Some("pat-anne"),
            "GET",
            "Patient/pat-anne",
            None,
        );
        assert_eq!(
            own,
            Decision::Allow {
                granted_by: "patient/Patient.read".into()
            }
        );
        let other = decide_for(
            "patient/Patient.read",
            Some("pat-anne"),
            "GET",
            "Patient/pat-bo",
            None,
        );
        assert_eq!(reason(other), Some(DenyReason::OutsideCompartment));
        let none = decide_for(
            "patient/Patient.read",
            None,
            "GET",
            "Patient/pat-anne",
            None,
        );
        assert_eq!(reason(none), Some(DenyReason::NoPatientContext));
    }

    #[test]
    fn patient_token_searches_must_be_pinned_to_the_patient() {
        let scopes = "patient/Observation.rs patient/Patient.rs";
        let allowed = [
            ("Observation", "patient=pat-anne"),
            ("Observation", "patient=Patient/pat-anne&code=4548-4"),
            (
                "Observation",
                "patient=pat-anne&_count=2&_sort=-date&_summary=count",
            ),
            ("Patient", "_id=pat-anne"),
        ];
        for (path, query) in allowed {
            assert_eq!(
                reason(decide_for(
                    scopes,
                    Some("pat-anne"),
                    "GET",
                    path,
                    Some(query)
                )),
                None,
                "{path}?{query}"
            );
        }
        let denied = [
            ("Observation", ""),
            ("Observation", "patient=pat-bo"),
            ("Observation", "patient=pat-anne&patient=pat-bo"),
            ("Observation", "patient=pat-anne,pat-bo"),
            ("Observation", "subject=Patient/pat-bo"),
            ("Observation", "patient:missing=true"),
            (
                "Observation",
                "patient=pat-anne&_include=Observation:subject",
            ),
            (
                "Observation",
                "patient=pat-anne&_revinclude=Provenance:target",
            ),
            ("Observation", "patient=pat-anne&subject.name=Bo"),
            (
                "Observation",
                "patient=pat-anne&_has:Condition:patient:code=x",
            ),
            ("Observation", "patient=pat-anne&_filter=x"),
            ("Observation", "patient=pat-anne&_list=x"),
            ("Observation", "patient=pat-anne&_contained=true"),
            ("Patient", "name=Bo"),
            ("Patient", "_id=pat-anne&_revinclude=Observation:patient"),
        ];
        for (path, query) in denied {
            assert_eq!(
                reason(decide_for(
                    scopes,
                    Some("pat-anne"),
                    "GET",
                    path,
                    Some(query)
                )),
                Some(DenyReason::OutsideCompartment),
                "{path}?{query}"
            );
        }
    }

    #[test]
    fn searches_reaching_other_types_need_a_scope_on_every_type() {
        use DenyReason::SearchReachesOtherTypes as Reach;
        let cases: &[(&str, &str, Option<DenyReason>)] = &[
            (
                "user/Observation.rs",
                "_include=Observation:subject",
                Some(Reach),
            ),
            (
                "user/Observation.rs",
                "_revinclude=Provenance:target",
                Some(Reach),
            ),
            (
                "user/Observation.rs",
                "_has:Condition:patient:code=x",
                Some(Reach),
            ),
            ("user/Observation.rs", "subject.name=Bo", Some(Reach)),
            (
                "user/Observation.rs",
                "subject:Patient.name=Bo",
                Some(Reach),
            ),
            (
                "user/Observation.rs",
                "_include:iterate=Observation:subject",
                Some(Reach),
            ),
            ("user/Observation.rs", "code=4548-4&_count=5", None),
            ("user/*.rs", "_include=Observation:subject", None),
            ("system/*.rs", "subject.name=Bo", None),
        ];
        for (scopes, query, expected) in cases {
            let decision = decide_for(scopes, None, "GET", "Observation", Some(query));
            assert_eq!(reason(decision), *expected, "{scopes} ?{query}");
        }
    }

    #[test]
    fn form_body_parameters_count_like_query_parameters() {
        let scopes = ScopeSet::parse("user/Observation.rs");
        let mut request = classify("POST", "Observation/_search", None).unwrap();
        request
            .add_form_params(crate::request::parse_form("_include=Observation:subject").unwrap());
        let decision = decide(
            Subject {
                scopes: &scopes,
                patient: Some("pat-anne"),
            },
            &request,
        );
        assert_eq!(reason(decision), Some(DenyReason::SearchReachesOtherTypes));
    }

    #[test]
    fn conditional_create_needs_search_and_read_too() {
        let mut request = classify("POST", "Observation", None).unwrap();
        request.set_if_none_exist("_id=obs-bo-bp").unwrap();
        let create_only = ScopeSet::parse("system/Observation.c");
        assert_eq!(
            reason(decide(
                Subject {
                    scopes: &create_only,
                    patient: None
                },
                &request
            )),
            Some(DenyReason::InsufficientScope)
        );
        let full = ScopeSet::parse("system/Observation.crs");
        assert_eq!(
            reason(decide(
                Subject {
                    scopes: &full,
                    patient: None
                },
                &request
            )),
            None
        );
        request
            .set_if_none_exist("_has:Condition:patient:code=x")
            .unwrap();
        assert_eq!(
            reason(decide(
                Subject {
                    scopes: &full,
                    patient: None
                },
                &request
            )),
            Some(DenyReason::SearchReachesOtherTypes)
        );
    }

    #[test]
    fn patient_token_cannot_write_yet() {
        let decision = decide_for(
            "patient/Observation.cruds",
            Some("pat-anne"),
            "POST",
            "Observation",
            None,
        );
        assert_eq!(reason(decision), Some(DenyReason::OutsideCompartment));
    }

    #[test]
    fn a_user_scope_wins_over_a_narrower_patient_scope() {
        let decision = decide_for(
            "patient/Observation.rs user/Observation.rs",
            Some("pat-anne"),
            "GET",
            "Observation/x",
            None,
        );
        assert_eq!(
            decision,
            Decision::Allow {
                granted_by: "user/Observation.rs".into()
            }
        );
    }
}
