//! The FHIR operations the gateway lets through, declared: which operation, on which resource
//! types, at which level, and what its answer is. An operation not in the table is refused
//! (`unsupported-interaction`): the gateway cannot know whose data an unknown operation reads
//! or returns. `$everything` on a Patient is decided apart (it reads the whole compartment;
//! [`crate::shape::is_everything`]).
//!
//! The operations here answer with reference data (terminology): a scope that reads the
//! operation's resource type grants them, in every context, and their answers name no patient.

use crate::request::{FhirRequest, Interaction};

/// Where an operation may be invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `[type]/$op`.
    Type,
    /// `[type]/[id]/$op`.
    Instance,
}

/// One declared operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declared {
    /// Its name without the `$`.
    pub name: &'static str,
    /// The resource types it is invoked on.
    pub types: &'static [&'static str],
    /// The levels it is invoked at.
    pub levels: &'static [Level],
}

const TYPE_AND_INSTANCE: &[Level] = &[Level::Type, Level::Instance];

/// The terminology operations of R4 (§4.9 ValueSet, §4.8 CodeSystem, §4.10 ConceptMap): they
/// read and answer terminology, never patient data.
pub static DECLARED: &[Declared] = &[
    Declared {
        name: "expand",
        types: &["ValueSet"],
        levels: TYPE_AND_INSTANCE,
    },
    Declared {
        name: "validate-code",
        types: &["ValueSet", "CodeSystem"],
        levels: TYPE_AND_INSTANCE,
    },
    Declared {
        name: "lookup",
        types: &["CodeSystem"],
        levels: &[Level::Type],
    },
    Declared {
        name: "subsumes",
        types: &["CodeSystem"],
        levels: TYPE_AND_INSTANCE,
    },
    Declared {
        name: "translate",
        types: &["ConceptMap"],
        levels: TYPE_AND_INSTANCE,
    },
];

/// The declared operation `request` invokes, if it is one (at a declared level, on a declared
/// type).
pub fn declared(request: &FhirRequest) -> Option<&'static Declared> {
    if request.interaction() != Interaction::Operation {
        return None;
    }
    let name = request.operation()?;
    let resource_type = request.resource_type()?;
    let level = if request.id().is_some() {
        Level::Instance
    } else {
        Level::Type
    };
    DECLARED.iter().find(|op| {
        op.name == name && op.types.contains(&resource_type.as_str()) && op.levels.contains(&level)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::classify;

    fn op(method: &str, path: &str) -> Option<&'static str> {
        declared(&classify(method, path, None).unwrap()).map(|op| op.name)
    }

    #[test]
    fn only_declared_operations_on_their_types_and_levels() {
        assert_eq!(op("GET", "ValueSet/$expand"), Some("expand"));
        assert_eq!(op("POST", "ValueSet/vs-1/$expand"), Some("expand"));
        assert_eq!(
            op("GET", "CodeSystem/$validate-code"),
            Some("validate-code")
        );
        assert_eq!(op("GET", "CodeSystem/$lookup"), Some("lookup"));
        assert_eq!(op("GET", "CodeSystem/cs-1/$lookup"), None);
        assert_eq!(op("GET", "ConceptMap/$translate"), Some("translate"));
        assert_eq!(op("GET", "Observation/$expand"), None);
        assert_eq!(op("GET", "$expand"), None);
        assert_eq!(op("GET", "Patient/pat-anne/$everything"), None);
        assert_eq!(op("POST", "Observation/$validate"), None);
    }
}
