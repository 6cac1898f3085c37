//! The FHIR operations the gateway lets through, declared: which operation, on which resource
//! types, at which level, and what it is ([`Kind`]): reference data anyone who reads the type
//! may have, a search of its type by another name, a read of the instance it is invoked on, or
//! a patient's whole record. An operation not in the table is refused (`unsupported-interaction`):
//! the gateway cannot know whose data an unknown operation reads or returns.
//!
//! The table is R4's and SMART's ([`Operations::builtin`]); operators put rows ahead of it in
//! the configuration (`[[operation]]`), to declare more operations or to refuse or redefine
//! these. The first row that matches decides. classification records the built-in kind of
//! an operation; the gateway applies its own table with `FhirRequest::apply_operations`.

use std::sync::LazyLock;

use crate::resource_type::ResourceType;

/// Where an operation may be invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `[base]/$op`.
    System,
    /// `[type]/$op`.
    Type,
    /// `[type]/[id]/$op`.
    Instance,
}

impl Level {
    /// `system`, `type` or `instance`.
    pub fn parse(text: &str) -> Option<Level> {
        match text {
            "system" => Some(Level::System),
            "type" => Some(Level::Type),
            "instance" => Some(Level::Instance),
            _ => None,
        }
    }
}

/// What an operation is, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// It answers with reference data (terminology, validation outcomes), nobody's record: a
    /// scope that reads its type grants it in every context, and its answer names no patient.
    Reference,
    /// A search of its type by another name (`Observation/$lastn`, `DocumentReference/$docref`):
    /// granted, pinned to the patient, narrowed and checked exactly as a search of that type.
    Search,
    /// A read of the instance it is invoked on (`Composition/[id]/$document`,
    /// `[type]/[id]/$meta`): granted as a read; under a patient-context scope the instance is
    /// read first and must be the patient's, and the answer is checked.
    Instance,
    /// `Patient/[id]/$everything`: the patient's whole compartment.
    Everything,
    /// Bulk Data `$export` (system, `Patient`, `Group/[id]`): every resource of the types
    /// asked for, of every patient (or the group's), for a backend service: only `system/`
    /// scopes grant it, one that covers every type exported.
    Export,
    /// Refused whatever the scopes (an operator's override of a built-in row).
    Refused,
}

impl Kind {
    /// `reference`, `search`, `instance` or `refused` (what an operator may declare).
    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "reference" => Some(Kind::Reference),
            "search" => Some(Kind::Search),
            "instance" => Some(Kind::Instance),
            "refused" => Some(Kind::Refused),
            _ => None,
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    name: String,
    /// Empty: any type.
    types: Vec<ResourceType>,
    levels: Vec<Level>,
    kind: Kind,
}

impl Operation {
    /// A row: `name` without the `$`, the resource `types` it is invoked on (none: any), the
    /// `levels`, and its `kind`. Refused when it could not mean anything: an empty or invalid
    /// name, no level, an unknown type, a search without one type level, an instance read
    /// without the instance level, a system-level row naming types.
    pub fn new(name: &str, types: &[&str], levels: &[Level], kind: Kind) -> Result<Self, String> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(format!("{name:?} is not an operation name (without the $)"));
        }
        if levels.is_empty() {
            return Err("at least one level (system, type, instance) is needed".to_owned());
        }
        let types = types
            .iter()
            .map(|t| {
                ResourceType::parse(t).ok_or_else(|| format!("{t:?} is not an R4 resource type"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if levels.contains(&Level::System) && !types.is_empty() {
            return Err("a system-level operation names no resource types".to_owned());
        }
        match kind {
            Kind::Search if types.len() != 1 || levels != [Level::Type] => {
                return Err("a search is of one resource type, at the type level".to_owned());
            }
            Kind::Instance if levels != [Level::Instance] => {
                return Err("an instance read is at the instance level only".to_owned());
            }
            Kind::Everything | Kind::Export => {
                return Err(format!("${name} is the gateway's own"));
            }
            // Reference data is nobody's: a row saying so of patients' records (or of any
            // type) would let their data through unchecked.
            Kind::Reference
                if types.is_empty()
                    || !types
                        .iter()
                        .all(|t| crate::compartment::is_shared_type(t.as_str())) =>
            {
                return Err(
                    "reference data is of types that are nobody's record: name them, each shared reference data (Practitioner, Organization, ValueSet, ...)".to_owned(),
                );
            }
            _ => {}
        }
        // The gateway's own operations may be refused, not redefined (a redefinition could
        // take their checks away).
        if kind != Kind::Refused && BUILTIN.rows.iter().any(|row| row.name == name) {
            return Err(format!(
                "${name} is declared by the gateway: an operator row may only refuse it"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            types,
            levels: levels.to_vec(),
            kind,
        })
    }

    fn builtin(name: &str, types: &[&str], levels: &[Level], kind: Kind) -> Self {
        Self {
            name: name.to_owned(),
            types: types
                .iter()
                .filter_map(|t| ResourceType::parse(t))
                .collect(),
            levels: levels.to_vec(),
            kind,
        }
    }

    /// The operation's name without the `$`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn matches(&self, name: &str, resource_type: Option<ResourceType>, level: Level) -> bool {
        self.name == name
            && self.levels.contains(&level)
            && (self.types.is_empty() || resource_type.is_some_and(|t| self.types.contains(&t)))
    }
}

/// The table: rows in order, the first match decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operations {
    rows: Vec<Operation>,
}

const TYPE_AND_INSTANCE: &[Level] = &[Level::Type, Level::Instance];

static BUILTIN: LazyLock<Operations> = LazyLock::new(|| {
    use Kind::{Everything, Export, Instance, Reference, Search};
    use Level::Type;
    let row = Operation::builtin;
    Operations {
        rows: vec![
            // R4 Patient-everything: the patient's whole compartment.
            row("everything", &["Patient"], &[Level::Instance], Everything),
            // Terminology (R4 §4.8 CodeSystem, §4.9 ValueSet, §4.10 ConceptMap).
            row("expand", &["ValueSet"], TYPE_AND_INSTANCE, Reference),
            row(
                "validate-code",
                &["ValueSet", "CodeSystem"],
                TYPE_AND_INSTANCE,
                Reference,
            ),
            row("lookup", &["CodeSystem"], &[Type], Reference),
            row("subsumes", &["CodeSystem"], TYPE_AND_INSTANCE, Reference),
            row("translate", &["ConceptMap"], TYPE_AND_INSTANCE, Reference),
            // Resource-validate (R4 §2.38.0.6): of a resource sent, an outcome; against an
            // existing instance, it reads that instance.
            row("validate", &[], &[Type], Reference),
            row("validate", &[], &[Level::Instance], Instance),
            // Resource-meta of one instance (its tags, labels and profiles); the type and
            // system levels (everything in use, anybody's) are not declared.
            row("meta", &[], &[Level::Instance], Instance),
            // Observation-lastn (R4 §8.11.4.4) and DocumentReference-docref (IHE MHD / US
            // Core): searches of their type.
            row("lastn", &["Observation"], &[Type], Search),
            row("docref", &["DocumentReference"], &[Type], Search),
            // Composition-document (R4 §3.3.1.4.8): the document a Composition heads.
            row("document", &["Composition"], &[Level::Instance], Instance),
            // Bulk Data Access (SMART/HL7 IG v2): kick-off at the system level, for all
            // patients, or for a Group's members.
            row("export", &[], &[Level::System], Export),
            row("export", &["Patient"], &[Type], Export),
            row("export", &["Group"], &[Level::Instance], Export),
        ],
    }
});

impl Operations {
    /// R4's and SMART's operations, as the gateway declares them.
    pub fn builtin() -> &'static Operations {
        &BUILTIN
    }

    /// The operator's `rows` ahead of the built-in ones: they declare more operations, and
    /// refuse or redefine built-in ones.
    pub fn with_rows(rows: Vec<Operation>) -> Operations {
        Operations {
            rows: rows
                .into_iter()
                .chain(BUILTIN.rows.iter().cloned())
                .collect(),
        }
    }

    /// Every row, the first match first.
    pub fn rows(&self) -> &[Operation] {
        &self.rows
    }

    /// What the operation `name` invoked at `level` (on `resource_type`) is, if declared.
    pub fn kind(
        &self,
        name: &str,
        resource_type: Option<ResourceType>,
        level: Level,
    ) -> Option<Kind> {
        self.rows
            .iter()
            .find(|row| row.matches(name, resource_type, level))
            .map(Operation::kind)
    }
}

/// Whether a declared operation would do more than read with these parameters: `$document`
/// with `persist` anything but `false` stores the document it makes (R4 Composition-document);
/// `$validate` with `mode=delete` reports what refers to the instance. Refused.
pub fn writes(operation: Option<&str>, params: &[(String, String)]) -> bool {
    let any = |wanted: &str, test: &dyn Fn(&str) -> bool| {
        params
            .iter()
            .any(|(name, value)| name.split(':').next() == Some(wanted) && test(value))
    };
    match operation {
        Some("document") => any("persist", &|value| value != "false"),
        // `$validate?mode=delete` tells what refers to the instance (a delete conflict names
        // it): another patient's record, through a resource that is nobody's.
        Some("validate") => any("mode", &|value| value.trim() == "delete"),
        _ => false,
    }
}

/// The one resource type a Bulk Data `$export` is limited to (`_type` naming exactly one
/// type, once), if it is; otherwise it exports every type (or several) and only a scope on
/// every type covers it.
pub fn export_type(params: &[(String, String)]) -> Option<ResourceType> {
    let mut types = params
        .iter()
        .filter(|(name, _)| name == "_type")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim);
    let only = ResourceType::parse(types.next()?)?;
    types.next().is_none().then_some(only)
}

/// The Bulk Data kick-off parameters (IG v2) an export may carry; `includeAssociatedData`
/// adds types of the server's choosing, so it is taken only where every type is exported.
const EXPORT_PARAMETERS: &[&str] = &[
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_typeFilter",
    "patient",
    "organizeOutputBy",
    "allowPartialManifests",
    "includeAssociatedData",
];

/// Whether an export's parameters are ones it may carry, as spelled (no modifier: a server
/// may ignore a parameter it does not know, and export more than was decided on), and
/// `includeAssociatedData` only when no single type was asked for.
pub fn export_parameters_known(params: &[(String, String)]) -> bool {
    let single_type = export_type(params).is_some();
    params.iter().all(|(name, _)| {
        EXPORT_PARAMETERS.contains(&name.as_str())
            && !(single_type && name == "includeAssociatedData")
    })
}
