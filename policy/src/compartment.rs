//! The Patient compartment (FHIR R4 CompartmentDefinition `patient`, generated into
//! [`crate::compartment_table`]): which resources belong to a patient, decided from the resource
//! itself by following the compartment's reference paths.
//! It reads only the resource and looks nothing up: a reference by identifier alone places no
//! one in the compartment. Whose data such a resource is takes a lookup: [`Identified`].

use std::sync::OnceLock;

use serde_json::Value;

use crate::compartment_table::{CompartmentLink, PATIENT_COMPARTMENT};
use crate::raw::{OrderedRaw, RawBundle, RawEntry};

mod flat;
mod identified;

pub use identified::{
    AnswerIdentifiers, Identified, identifiers_in_answer, identifiers_written, unplaceable,
};

/// Reference data that is about no patient: readable under patient-context scopes, and allowed
/// in patient-context responses (e.g. an `_include`d Practitioner).
pub const SHARED_TYPES: &[&str] = &[
    "ActivityDefinition",
    "CapabilityStatement",
    "CodeSystem",
    "ConceptMap",
    "Endpoint",
    "HealthcareService",
    "Location",
    "Medication",
    "MedicationKnowledge",
    "OperationDefinition",
    "Organization",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "SearchParameter",
    "StructureDefinition",
    "Substance",
    "ValueSet",
];

/// How a resource stands to a patient's compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// In the compartment: the Patient itself, or a resource that references it on a
    /// compartment path.
    Member,
    /// Reference data about no patient ([`SHARED_TYPES`]).
    Shared,
    /// Anything else: another patient's data, or a type that cannot be placed.
    Outside,
}

/// The compartment links of a type, if it is in the Patient compartment.
pub(crate) fn links(resource_type: &str) -> Option<&'static [CompartmentLink]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(name, _)| (*name).cmp(resource_type))
        .ok()
        .map(|index| PATIENT_COMPARTMENT[index].1)
}

/// Whether `resource_type` is in the Patient compartment.
pub fn is_compartment_type(resource_type: &str) -> bool {
    resource_type == "Patient" || links(resource_type).is_some()
}

/// Whether resources of `resource_type` may name the patients whose data they are: the
/// compartment's types, and the few outside it that do ([`patient_paths`]).
pub fn names_patients(resource_type: &str) -> bool {
    is_compartment_type(resource_type)
        || PATIENT_LINKS_OUTSIDE_COMPARTMENT
            .iter()
            .any(|(name, _)| *name == resource_type)
}

/// Whether `resource_type` is shared reference data.
pub fn is_shared_type(resource_type: &str) -> bool {
    SHARED_TYPES.binary_search(&resource_type).is_ok()
}

/// The search parameters that pin a search of `resource_type` to a patient: the compartment's
/// own parameters, plus `patient` where R4 defines it as the patient subset of `subject`.
pub fn pinning_params(resource_type: &str) -> impl Iterator<Item = &'static str> {
    // `patient` is the patient subset of `subject` on the clinical types; elsewhere (Group,
    // Schedule, ...) R4 defines no such parameter, and a lenient server would ignore it.
    let has_patient_param = matches!(narrowing_param(resource_type), Some("patient" | "subject"));
    links(resource_type)
        .unwrap_or_default()
        .iter()
        .map(|link| link.param)
        .chain(has_patient_param.then_some("patient"))
}

/// Whether `param` links some resource type to the Patient compartment.
pub fn is_compartment_param(param: &str) -> bool {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let mut names: Vec<&'static str> = PATIENT_COMPARTMENT
                .iter()
                .flat_map(|(_, links)| links.iter().map(|link| link.param))
                .collect();
            names.sort_unstable();
            names.dedup();
            names
        })
        .binary_search(&param)
        .is_ok()
}

/// The parameter used to narrow an unpinned search to the patient.
pub fn narrowing_param(resource_type: &str) -> Option<&'static str> {
    if resource_type == "Patient" {
        return Some("_id");
    }
    let links = links(resource_type)?;
    ["patient", "subject"]
        .into_iter()
        .find(|preferred| links.iter().any(|link| link.param == *preferred))
        .or_else(|| links.first().map(|link| link.param))
}

/// Whether a reference string is exactly `Patient/<patient>`, optionally with a version
/// (`/_history/<vid>` and nothing after it).
pub fn references_patient(reference: &str, patient: &str) -> bool {
    let Some(rest) = reference
        .strip_prefix("Patient/")
        .and_then(|r| r.strip_prefix(patient))
    else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix("/_history/")
            .is_some_and(crate::resource_type::is_valid_id)
}

/// How `resource` (FHIR JSON) stands to `patient`'s compartment.
pub fn membership(resource: &Value, patient: &str) -> Membership {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Membership::Outside;
    };
    if resource_type == "Patient" {
        let own = resource.get("id").and_then(Value::as_str) == Some(patient);
        return if own {
            Membership::Member
        } else {
            Membership::Outside
        };
    }
    if resource_type == "AuditEvent"
        && let Some(membership) =
            audit_event_membership(resource.get("entity"), resource.get("agent"), patient)
    {
        return membership;
    }
    if let Some(links) = links(resource_type) {
        let mut tally = Tally::default();
        for link in links {
            for path in link.paths {
                walk(resource, path.split('.'), &mut |reference| {
                    tally.add(reference, patient, is_primary(path))
                });
            }
        }
        return tally.verdict(contained_ok(resource.get("contained"), patient));
    }
    if is_shared_type(resource_type) {
        Membership::Shared
    } else {
        Membership::Outside
    }
}

/// The patients whose compartment `resource` is in: its own id for a Patient, else every
/// `Patient/<id>` it references on a compartment path (an Observation about one patient with
/// another as performer is in both compartments). Sorted, without duplicates.
pub fn patients_of(resource: &Value) -> Vec<String> {
    let mut patients = Vec::new();
    collect_patients(resource, &mut patients);
    patients.sort_unstable();
    patients.dedup();
    patients
}

/// The patients a Patient links to by id (`link.other`: `replaced-by`, `replaces`, `seealso`):
/// writing the link reaches into their records as much as into hers. Not whose data the
/// Patient is (reading Bo's record is not reading Anne's because it links to hers).
pub fn linked_patients(resource: &Value) -> Vec<String> {
    let mut patients = Vec::new();
    if resource.get("resourceType").and_then(Value::as_str) == Some("Patient") {
        walk(resource, "link.other".split('.'), &mut |reference| {
            push_patient(reference, &mut patients)
        });
    }
    patients
}

/// The patients a FHIR answer is about: those of a single resource, or of every entry of a
/// Bundle (search results, history, `$everything`, batch responses). Sorted, no duplicates.
pub fn patients_in_answer(answer: &Value) -> Vec<String> {
    let mut patients = Vec::new();
    if answer.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        for entry in answer
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(resource) = entry.get("resource") {
                collect_patients(resource, &mut patients);
            }
        }
    } else {
        collect_patients(answer, &mut patients);
    }
    patients.sort_unstable();
    patients.dedup();
    patients
}

fn collect_patients(resource: &Value, patients: &mut Vec<String>) {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // A Bundle inside an answer (a batch entry's searchset, a document): its entries count.
    if resource_type == "Bundle" {
        for entry in resource
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(inner) = entry.get("resource") {
                collect_patients(inner, patients);
            }
        }
        return;
    }
    if resource_type == "Patient" {
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            patients.push(id.to_owned());
        }
        return;
    }
    for path in patient_paths(resource_type) {
        walk(resource, path.split('.'), &mut |reference| {
            push_patient(reference, patients)
        });
    }
}

/// The patient entities of an AuditEvent (`entity.role` object-role `1`), as the gateway writes
/// one per patient (BALP): whose event it is. Its agents (a user whose `fhirUser` is written
/// absolute, a guardian who is a patient herself) and its other entities (the resource read,
/// which may be another patient's record linked to hers) are not. `None` when it has none (an
/// event written elsewhere): then its compartment paths decide.
fn patient_entities(entity: Option<&Value>) -> Option<Vec<&Value>> {
    let patients: Vec<&Value> = entity?
        .as_array()?
        .iter()
        .filter(|entity| {
            let role = entity.get("role");
            role.and_then(|role| role.get("system"))
                .and_then(Value::as_str)
                == Some(OBJECT_ROLE)
                && role
                    .and_then(|role| role.get("code"))
                    .and_then(Value::as_str)
                    == Some("1")
        })
        .collect();
    (!patients.is_empty()).then_some(patients)
}

/// [`membership`] of an AuditEvent with patient entities: hers when every one of them is
/// exactly her, and nothing else in it (another entity, an agent) names another patient or a
/// Patient spelled so that nobody can place it. An agent or entity that is no patient (a
/// practitioner whose `fhirUser` is an absolute URL) does not make it someone else's.
fn audit_event_membership(
    entity: Option<&Value>,
    agent: Option<&Value>,
    patient: &str,
) -> Option<Membership> {
    let patients = patient_entities(entity)?;
    let hers = patients.iter().all(|entity| {
        entity
            .pointer("/what/reference")
            .and_then(Value::as_str)
            .is_some_and(|reference| references_patient(reference, patient))
    });
    let mut others = false;
    let mut look = |value: Option<&Value>, pointer: &str| {
        for item in value.and_then(Value::as_array).into_iter().flatten() {
            if let Some(reference) = item.pointer(pointer).and_then(Value::as_str) {
                others |= odd_patient_reference(reference)
                    || patient_reference_id(reference).is_some_and(|id| id != patient);
            }
        }
    };
    look(entity, "/what/reference");
    look(agent, "/who/reference");
    Some(if hers && !others {
        Membership::Member
    } else {
        Membership::Outside
    })
}

/// The code system of `AuditEvent.entity.role`.
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// Types outside the R4 Patient compartment whose resources still name a patient, and where:
/// a Device implanted in her, the Binary a document of hers is stored in, a decision or a
/// contract about her. Whose data they are matters to consent and the audit record as much.
const PATIENT_LINKS_OUTSIDE_COMPARTMENT: &[(&str, &[&str])] = &[
    ("Binary", &["securityContext"]),
    ("Contract", &["subject"]),
    ("Device", &["patient"]),
    ("GuidanceResponse", &["subject"]),
    ("Linkage", &["item.resource"]),
    ("MeasureReport", &["subject"]),
    ("SupplyDelivery", &["patient"]),
];

/// The element paths of `resource_type` that may reference the patient whose data it is: the
/// compartment's, and for a few types outside it, [`PATIENT_LINKS_OUTSIDE_COMPARTMENT`].
pub(crate) fn patient_paths(resource_type: &str) -> impl Iterator<Item = &'static str> {
    // Asked once per resource of every answer: both tables are joined once, by type (hashed
    // with a fixed fast hash: the keys are the tables', only the lookups come from answers).
    type ByType =
        std::collections::HashMap<&'static str, Vec<&'static str>, foldhash::fast::FixedState>;
    static PATHS: std::sync::LazyLock<ByType> = std::sync::LazyLock::new(|| {
        let mut paths = ByType::default();
        for (name, links) in PATIENT_COMPARTMENT {
            let list = paths.entry(name).or_default();
            list.extend(links.iter().flat_map(|link| link.paths.iter().copied()));
        }
        for (name, outside) in PATIENT_LINKS_OUTSIDE_COMPARTMENT {
            paths
                .entry(name)
                .or_default()
                .extend(outside.iter().copied());
        }
        paths
    });
    PATHS
        .get(resource_type)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .copied()
}

/// The patient a `Patient/<id>` reference names, added to `patients`.
fn push_patient(reference: &str, patients: &mut Vec<String>) {
    if let Some(id) = patient_reference_id(reference) {
        add_patient(id, patients);
    }
}

/// `id` added to `patients`, unless it is the last one added (a searchset's entries mostly name
/// one patient in turn; the readers that need a set sort and deduplicate once at the end).
fn add_patient(id: &str, patients: &mut Vec<String>) {
    if patients.last().is_none_or(|last| last != id) {
        patients.push(id.to_owned());
    }
}

/// The id of a `Patient/<id>` reference, relative or absolute (`https://…/Patient/<id>`), with
/// or without `/_history/<vid>` (and nothing after it). Any other spelling that mentions a
/// Patient (`../Patient/bo`, `Patient/anne/_history/1/../../Patient/bo`: servers read such a
/// thing by its first pair, or its last, or refuse it) is none: see [`odd_patient_reference`].
pub fn patient_reference_id(reference: &str) -> Option<&str> {
    static HISTORY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("/_history/"));
    // (Most references hold no `_` at all: a plain byte search rules the pattern out first.)
    let history =
        memchr::memchr(b'_', reference.as_bytes()).and_then(|_| HISTORY.find(reference.as_bytes()));
    let (reference, version) = match history {
        // (The match is ASCII, so both sides are on character boundaries.)
        Some(at) => (
            &reference[..at],
            Some(&reference[at + "/_history/".len()..]),
        ),
        None => (reference, None),
    };
    if version.is_some_and(|version| !crate::resource_type::is_valid_id(version)) {
        return None;
    }
    let (rest, id) = reference.rsplit_once('/')?;
    let relative_or_absolute =
        rest == "Patient" || (rest.ends_with("/Patient") && absolute_url(rest));
    (relative_or_absolute && crate::resource_type::is_valid_id(id)).then_some(id)
}

/// Whether `text` is an absolute URL as plain as a reference to one Patient must be: a scheme
/// (a letter, then letters, digits, `+`, `-` or `.`: RFC 3986 §3.1) and `://`, and after it no
/// query, fragment, percent-escape or dot segment, which servers resolve differently
/// (`https://h/Patient/anne/../Patient/bo` is Anne's to one and Bo's to another).
/// `#://x/Patient/anne` is not one: it is a local reference, to a contained resource whose id
/// only looks like a URL, and only a lookup places it.
fn absolute_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, rest)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            && !rest.contains(['?', '#', '%'])
            && !rest.split('/').any(|segment| matches!(segment, "." | ".."))
    })
}

/// Whether a written Consent names its patient plainly (`Patient/<id>`, no version, not
/// absolute): the gateway finds a patient's Consents by searching `patient=Patient/<id>`, and
/// a server matching references as written would not find one spelled otherwise, so its block
/// would never hold. Anything but a Consent: true.
pub fn consent_patient_plain(resource: &Value) -> bool {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return true;
    }
    match resource
        .pointer("/patient/reference")
        .and_then(Value::as_str)
    {
        Some(reference) => reference
            .strip_prefix("Patient/")
            .is_some_and(crate::resource_type::is_valid_id),
        None => resource.get("patient").is_none(),
    }
}

/// Whether `reference` mentions a Patient in a spelling that is not plainly one
/// ([`patient_reference_id`]): whom it names depends on the server. Such a reference on a
/// patient path makes its resource unplaceable (withheld where consent binds; a write with it
/// is not verifiable).
pub fn odd_patient_reference(reference: &str) -> bool {
    patient_reference_id(reference).is_none() && odd_unless_plain(reference)
}

/// [`odd_patient_reference`] of a reference [`patient_reference_id`] does not read.
fn odd_unless_plain(reference: &str) -> bool {
    !reference.starts_with('#') && !other_type_reference(reference) && mentions_patient(reference)
}

/// Whether `reference` holds `patient` in any case.
fn mentions_patient(reference: &str) -> bool {
    reference
        .as_bytes()
        .windows("patient".len())
        .any(|window| window.eq_ignore_ascii_case(b"patient"))
}

/// [`patients_in_answer`] read from the answer's bytes without building its tree: each
/// resource is split into its top-level fields and only the subtrees the compartment paths
/// start with are parsed. `None` when that cannot be done faithfully (not a JSON object, an
/// entry that is not one, a key given twice) or is not all there is to know (a reference by
/// identifier only that may name a patient): then parse the answer and ask
/// [`patients_in_answer`] and [`identifiers_in_answer`].
pub fn patients_in_body(body: &[u8]) -> Option<Vec<String>> {
    // One pass: a Bundle's entries' resources are read as their fields directly (a second pass
    // over each resource is what made reading searchsets cost).
    // Entries are read as the rewriter reads them ([`RawEntry`]: every member of an entry, a
    // key given twice or serde_json's raw value token refused), so both readings agree.
    let answer: RawBundle<'_, RawEntry<'_>> = crate::raw::from_body(body)?;
    let is_bundle = answer.get_str("resourceType").as_deref() == Some("Bundle");
    match (answer.split(), is_bundle) {
        ((Some(entries), _), true) => patients_in_entries(&entries),
        // Another resource with an `entry` (a List): read as a tree.
        ((Some(_), _), false) => None,
        ((None, fields), _) => {
            let mut patients = Vec::new();
            collect_patients_raw(&fields, &mut patients, 0)?;
            patients.sort_unstable();
            patients.dedup();
            Some(patients)
        }
    }
}

/// [`patients_in_body`] of a Bundle's entries already read ([`RawEntry`], as the rewriter of a
/// searchset's URLs reads them): the same answer, without scanning the resources again.
pub fn patients_in_entries(entries: &[RawEntry<'_>]) -> Option<Vec<String>> {
    let mut patients = Vec::new();
    for resource in entries.iter().filter_map(RawEntry::resource) {
        collect_patients_raw(resource, &mut patients, 1)?;
    }
    patients.sort_unstable();
    patients.dedup();
    Some(patients)
}

/// How deep Bundles in Bundles are read from the bytes: raw values have no depth limit, and a
/// Bundle nested a hundred thousand times would exhaust the stack. Deeper: parsed as a tree,
/// whose parser stops at its own limit (and an answer that cannot be read does not leave).
const MAX_NESTED_BUNDLES: usize = 16;

fn collect_patients_raw(
    resource: &OrderedRaw<'_>,
    patients: &mut Vec<String>,
    depth: usize,
) -> Option<()> {
    // (A key given twice was refused when the resource was read.)
    if depth > MAX_NESTED_BUNDLES {
        return None;
    }
    let resource_type = resource.get_str("resourceType").unwrap_or_default();
    if resource_type == "Bundle" {
        if let Some(entries) = resource.get("entry") {
            let entries: Vec<RawEntry<'_>> = serde_json::from_str(entries.get()).ok()?;
            for inner in entries.iter().filter_map(RawEntry::resource) {
                collect_patients_raw(inner, patients, depth + 1)?;
            }
        }
        return Some(());
    }
    if resource_type == "Patient" {
        if let Some(id) = resource.get_str("id") {
            patients.push(id.into_owned());
        }
        return Some(());
    }
    for path in patient_paths(&resource_type) {
        let mut steps = path.split('.');
        let Some(raw) = resource.get(steps.next().unwrap_or_default()) else {
            continue;
        };
        let mut by_identifier = false;
        let mut place = |reference: &str| match placed(reference, path) {
            Placed::Plainly(id) => add_patient(id, patients),
            Placed::ByLookup => by_identifier = true,
            Placed::Not => {}
        };
        walk_raw(raw.get(), steps, &mut place).ok()?;
        if by_identifier {
            // Whose data it is takes a lookup: read as a tree, where the identifiers are.
            return None;
        }
    }
    Some(())
}

/// [`membership`] of a resource read as raw top-level fields: only the subtrees the compartment
/// paths start with are parsed, not the whole resource.
pub(crate) fn membership_raw(resource: &OrderedRaw<'_>, patient: &str) -> Membership {
    let Some(resource_type) = resource.get_str("resourceType") else {
        return Membership::Outside;
    };
    if resource_type == "Patient" {
        let own = resource.get_str("id").as_deref() == Some(patient);
        return if own {
            Membership::Member
        } else {
            Membership::Outside
        };
    }
    if resource_type == "AuditEvent" {
        let read = |name: &str| match resource.get(name) {
            Some(raw) => crate::strict_json::tree_unique_str(raw.get())
                .map(Some)
                .map_err(|_| ()),
            None => Ok(None),
        };
        let (Ok(entity), Ok(agent)) = (read("entity"), read("agent")) else {
            return Membership::Outside;
        };
        if let Some(membership) = audit_event_membership(entity.as_ref(), agent.as_ref(), patient) {
            return membership;
        }
    }
    if let Some(links) = links(&resource_type) {
        let mut tally = Tally::default();
        for link in links {
            for path in link.paths {
                let mut steps = path.split('.');
                let first = steps.next().unwrap_or_default();
                let Some(raw) = resource.get(first) else {
                    continue;
                };
                // A member given twice: a client may read the other one than was checked.
                let walked = walk_raw(raw.get(), steps, &mut |reference| {
                    tally.add(reference, patient, is_primary(path))
                });
                if walked.is_err() {
                    return Membership::Outside;
                }
            }
        }
        let contained = resource
            .get("contained")
            .map(|raw| crate::strict_json::tree_unique_str(raw.get()));
        let contained_ok = match contained {
            None => true,
            Some(Ok(contained)) => contained_ok(Some(&contained), patient),
            Some(Err(_)) => false,
        };
        return tally.verdict(contained_ok);
    }
    if is_shared_type(&resource_type) {
        Membership::Shared
    } else {
        Membership::Outside
    }
}

/// What the compartment references of a resource say.
#[derive(Default)]
struct Tally {
    names_patient: bool,
    names_someone_else: bool,
}

impl Tally {
    fn add(&mut self, reference: &str, patient: &str, primary: bool) {
        if reference == UNTYPED_BY_IDENTIFIER && !primary {
            // `performer: {identifier: ...}`: a professional, as far as anyone can tell.
            return;
        }
        if references_patient(reference, patient) {
            self.names_patient = true;
        } else if reference.starts_with('#') || other_type_reference(reference) {
            // A contained resource (checked with the container's `contained`), or plainly
            // another type's (`Practitioner/p`).
        } else {
            // Another patient, or a reference that cannot be placed: bare, absolute, a URN, or
            // any other shape a server may resolve by its last `Type/id` (`../Patient/bo`).
            self.names_someone_else = true;
        }
    }

    /// A member names the patient and nobody else on any compartment path: an Observation
    /// ABOUT another patient with this patient as performer is not hers to see or write.
    fn verdict(&self, contained_ok: bool) -> Membership {
        if self.names_patient && !self.names_someone_else && contained_ok {
            Membership::Member
        } else {
            Membership::Outside
        }
    }
}

/// Whether `reference` is plainly a resource of another type than Patient: `Type/id` or
/// `Type/id/_history/vid`, and nothing else.
fn other_type_reference(reference: &str) -> bool {
    // `Type/id` or `Type/id/_history/vid`, nothing more.
    let mut parts = reference.split('/');
    let (Some(type_name), Some(id)) = (parts.next(), parts.next()) else {
        return false;
    };
    let version = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some("_history"), Some(version), None) => Some(version),
        _ => return false,
    };
    // A type name as FHIR writes them (R4's, a server's own such as `Bot`, a later release's),
    // and not Patient in any case.
    let type_like = type_name.starts_with(|c: char| c.is_ascii_uppercase())
        && type_name.chars().all(|c| c.is_ascii_alphanumeric());
    type_like
        && !type_name.eq_ignore_ascii_case("Patient")
        && crate::resource_type::is_valid_id(id)
        && version.is_none_or(crate::resource_type::is_valid_id)
}

/// Contained resources travel with their container: none may belong to another patient.
fn contained_ok(contained: Option<&Value>, patient: &str) -> bool {
    let Some(contained) = contained else {
        return true;
    };
    let Some(items) = contained.as_array() else {
        return false;
    };
    items.iter().all(|item| {
        let resource_type = item
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if resource_type == "Patient" {
            return false;
        }
        match links(resource_type) {
            // A contained compartment resource must not name anyone else either.
            Some(_) => {
                !matches!(membership(item, patient), Membership::Outside)
                    || !names_any_patient(item)
            }
            None => true,
        }
    })
}

fn names_any_patient(resource: &Value) -> bool {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut found = false;
    for path in links(resource_type)
        .unwrap_or_default()
        .iter()
        .flat_map(|link| link.paths.iter())
    {
        walk(resource, path.split('.'), &mut |reference| {
            // Anything but a local reference or plainly another type's may name a patient.
            found |= !(reference.starts_with('#') || other_type_reference(reference))
        });
    }
    found
}

/// What [`walk`] hands over for a Reference with an `identifier` and no `reference`, typed
/// `Patient`.
const PATIENT_BY_IDENTIFIER: &str = "urn:portvagt:patient-by-identifier";
/// The same without a `type`: a Patient on the paths that only point at patients.
const UNTYPED_BY_IDENTIFIER: &str = "urn:portvagt:untyped-by-identifier";

/// Whether a compartment path is the resource's own patient (the element `subject` or
/// `patient`) or an element that can only reference a Patient (`Coverage.beneficiary`,
/// `ResearchSubject.individual`, `EnrollmentRequest.candidate`), where an untyped reference is
/// a patient reference. `AuditEvent.agent.who` or `Observation.performer` name professionals
/// and systems as often as patients.
fn is_primary(path: &str) -> bool {
    matches!(
        path,
        "patient" | "subject" | "beneficiary" | "individual" | "candidate"
    )
}

/// [`walk`] of a subtree given as its text (a raw value already read as JSON). The common
/// shape, a Reference or a list of them of plain strings where the path ends at it, is read
/// without a tree ([`flat::flat_references`]); anything else is read as a tree, as strictly as
/// the bytes that leave: a member given twice is an error.
fn walk_raw(
    text: &str,
    steps: std::str::Split<'_, char>,
    visit: &mut dyn FnMut(&str),
) -> Result<(), crate::strict_json::StrictJsonError> {
    if steps.clone().next().is_none()
        && let Some(references) = flat::flat_references(text)
    {
        references.visit(visit);
        return Ok(());
    }
    walk(&crate::strict_json::tree_unique_str(text)?, steps, visit);
    Ok(())
}

/// Follows `steps` from `value` (through arrays at any step) to References, and hands each
/// `reference` string to `visit` (a marker for references by identifier only).
fn walk(value: &Value, steps: std::str::Split<'_, char>, visit: &mut dyn FnMut(&str)) {
    walk_objects(value, steps, &mut |object| {
        if let Some(reference) = reference_of(object) {
            visit(reference);
        } else if object.contains_key("identifier") {
            // A Reference by identifier only: whom it names only the backend can say.
            match typed_patient(object) {
                Some(true) => visit(PATIENT_BY_IDENTIFIER),
                None => visit(UNTYPED_BY_IDENTIFIER),
                Some(false) => {}
            }
        } else if let Some(blank) = object.get("reference").and_then(Value::as_str) {
            // A blank reference and nothing else: placed as nobody's (someone else's).
            visit(blank);
        }
    });
}

/// A Reference's `reference`, unless blank (a lenient parser drops a blank one, leaving what
/// else the Reference says).
fn reference_of(object: &serde_json::Map<String, Value>) -> Option<&str> {
    object
        .get("reference")
        .and_then(Value::as_str)
        .filter(|reference| !reference.trim().is_empty())
}

/// What a Reference's `type` says of whether it may be a Patient: `Some(true)` for `Patient`,
/// its canonical URL, or a name of no resource type (which a lenient server may read as one);
/// `Some(false)` for another type; `None` when it has none.
fn typed_patient(object: &serde_json::Map<String, Value>) -> Option<bool> {
    let typed = object.get("type").and_then(Value::as_str)?;
    let name = typed
        .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        .unwrap_or(typed);
    Some(name == "Patient" || crate::resource_type::ResourceType::parse(name).is_none())
}

/// Follows `steps` from `value` (through arrays at any step) to the objects at their end.
fn walk_objects(
    value: &Value,
    mut steps: std::str::Split<'_, char>,
    visit: &mut dyn FnMut(&serde_json::Map<String, Value>),
) {
    match value {
        Value::Array(items) => {
            for item in items {
                walk_objects(item, steps.clone(), visit);
            }
        }
        Value::Object(object) => match steps.next() {
            Some(step) => {
                if let Some(child) = object.get(step) {
                    walk_objects(child, steps, visit);
                }
            }
            None => visit(object),
        },
        _ => {}
    }
}

/// The identifiers (`system|value`) of the references by identifier only on `resource`'s
/// compartment paths that may name a patient: typed `Patient`, or untyped on `subject` or
/// `patient` (as [`membership`] reads them). A write that names its patient so touches her as
/// much as one that names her by id: the gateway looks them up. `None` when one cannot be
/// looked up as a token search (no system, no value, or characters a token search reads
/// otherwise): whom it names, only the backend could say.
pub(crate) fn patient_identifiers(resource: &Value) -> Option<Vec<String>> {
    let found = identified::identifiers_written(resource);
    (!found.unplaceable).then_some(found.tokens)
}

/// Each reference by identifier only on `resource`'s patient paths that may name a patient
/// (see [`patient_identifiers`]), and each identifier of a contained Patient a patient path
/// points at (`#id`), handed to `visit` as `system|value`, or `None` when it cannot be looked
/// up so.
fn identifier_refs(resource: &Value, visit: &mut dyn FnMut(Option<String>)) {
    let resource_type = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default();
    for path in patient_paths(resource_type) {
        let mut steps = path.split('.');
        let Some(start) = resource.get(steps.next().unwrap_or_default()) else {
            continue;
        };
        walk_objects(start, steps, &mut |object| {
            if let Some(reference) = reference_of(object) {
                // A Patient spelled so that whom it names depends on the server: nobody can
                // place it.
                if odd_patient_reference(reference) {
                    visit(None);
                    return;
                }
                // A contained Patient is whoever its identifiers say: a copy of her record's
                // identity inside the resource is her as much as a reference by identifier.
                // One without an identifier to look up is somebody nobody can name, and so is
                // a local reference to nothing contained (`#http://h/Patient/anne`, spelled as
                // hers, naming nothing the resource holds) or to two resources of one id.
                if let Some(local) = reference.strip_prefix('#') {
                    match contained(resource, local).as_slice() {
                        [item]
                            if item.get("resourceType").and_then(Value::as_str)
                                == Some("Patient") =>
                        {
                            let identifiers = item
                                .get("identifier")
                                .and_then(Value::as_array)
                                .map_or(&[][..], Vec::as_slice);
                            if identifiers.is_empty() {
                                visit(None);
                            }
                            for identifier in identifiers {
                                visit(identifier_token(identifier));
                            }
                        }
                        [_] => {}
                        _ => visit(None),
                    }
                }
                return;
            }
            if !object.contains_key("identifier") {
                return;
            }
            // As [`walk`] reads it for membership.
            if !typed_patient(object).unwrap_or_else(|| is_primary(path)) {
                return;
            }
            visit(object.get("identifier").and_then(identifier_token));
        });
    }
}

/// The contained resources with id `local` (one, in a resource as FHIR allows it).
fn contained<'a>(resource: &'a Value, local: &str) -> Vec<&'a Value> {
    resource
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|item| {
            // Older servers wrote a contained resource's id with its `#`.
            let id = item.get("id").and_then(Value::as_str);
            id.map(|id| id.strip_prefix('#').unwrap_or(id)) == Some(local)
        })
        .collect()
}

/// An Identifier as a token search value (`system|value`), or `None` when it cannot be looked
/// up so: no system, no value, or characters a token search reads otherwise.
pub(crate) fn identifier_token(identifier: &Value) -> Option<String> {
    let part = |name: &str| {
        identifier
            .get(name)
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty() && !text.contains(['|', ',', '\\']))
    };
    part("system")
        .zip(part("value"))
        .map(|(system, value)| format!("{system}|{value}"))
}

/// How a reference [`walk`] hands over on `path` places a patient.
#[derive(Debug, PartialEq)]
enum Placed<'a> {
    /// By its spelling ([`patient_reference_id`]): her id.
    Plainly(&'a str),
    /// Only by a lookup (as [`identifier_refs`] reads them): a reference by identifier only,
    /// one to a contained resource (which may be a Patient with identifiers), or a Patient
    /// spelled oddly ([`odd_patient_reference`]).
    ByLookup,
    /// Not at all: it names no patient (another type's, a professional by identifier).
    Not,
}

/// [`Placed`] of one reference. A reference read plainly is never one to look up: no marker,
/// local reference or odd spelling is read as `Patient/<id>`.
fn placed<'a>(reference: &'a str, path: &str) -> Placed<'a> {
    if let Some(id) = patient_reference_id(reference) {
        return Placed::Plainly(id);
    }
    let by_lookup = reference == PATIENT_BY_IDENTIFIER
        || (reference == UNTYPED_BY_IDENTIFIER && is_primary(path))
        || reference.starts_with('#')
        || odd_unless_plain(reference);
    if by_lookup {
        Placed::ByLookup
    } else {
        Placed::Not
    }
}

#[cfg(test)]
mod tests;
