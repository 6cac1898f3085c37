//! Facts about a request's shape that several decisions share: whether it is
//! `Patient/[id]/$everything`, whether its search reaches resources of other types, and what a
//! v2 granular scope makes of it.

use crate::request::{FhirRequest, Interaction, parse_form};
use crate::scope::Scope;
use crate::verdict::DenyReason;

/// Parameters that make a search return or test resources of other types.
const OTHER_TYPE_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_has",
    "_contained",
    "_containedType",
];

/// `Patient/[id]/$everything` (R4 Patient-everything).
pub(crate) fn is_everything(request: &FhirRequest) -> bool {
    // Only the built-in row is of this kind (an operator may refuse it, not declare another).
    request.operation_kind() == Some(crate::operations::Kind::Everything)
}

/// Whether the request's parameters (or its conditional-create search) reach other types.
pub(crate) fn reaches_other_types(request: &FhirRequest) -> bool {
    let conditional = request.if_none_exist().unwrap_or_default();
    request.params().iter().chain(conditional).any(|(name, _)| {
        let base = name.split(':').next().unwrap_or(name);
        OTHER_TYPE_PARAMS.contains(&base) || name.contains('.')
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
    // A declared search is narrowed and checked as one. An operation on an instance answers
    // with something else than the instance (`$meta`'s labels), which no restriction can be
    // checked on: refused.
    if request.interaction() == Interaction::Operation && request.acts_as() == Interaction::Read {
        return Err(DenyReason::GranularScopeUnsupported);
    }
    match request.acts_as() {
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
