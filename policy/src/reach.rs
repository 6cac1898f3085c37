//! Reach: the one answer to "whose data does this request touch?".
//!
//! Authorization, consent, the audit record and response checks all need it, and every place
//! that answered it on its own read the request a little differently, which is where requests
//! slipped through. So it is computed here, once per request and per batch entry, from the
//! classified [`FhirRequest`], in every spelling a FHIR server resolves (FHIR R4 §3.1.1.4.9
//! reference search parameters):
//!
//! - `Patient/<id>` in the path: read, vread, history, writes, `$everything` and the Patient
//!   compartment (`Patient/<id>/*`, R4 §3.1.0.8.2);
//! - reference parameters that can point at a Patient (`patient`, `subject`, every Patient
//!   compartment parameter; `_id` and `link` on Patient) in every value spelling: `Patient/x`,
//!   a bare `x`, the `:Patient` type modifier, an absolute URL `https://…/Patient/x`, a
//!   versioned `Patient/x/_history/2`, comma-separated alternatives;
//! - `Patient/<id>` spelled out on any other parameter (`focus`, `target`, `entity`, ...);
//! - identifiers: `patient:identifier=…`, `subject:Patient.identifier=…`,
//!   `Patient?identifier=…`, which only the backend can turn into ids (the gateway looks them
//!   up; [`Reach::identifiers`]);
//! - the resource written by a create or update (its compartment references, and the
//!   identifiers of those by identifier only that may name a patient, looked up like
//!   `patient:identifier`), and, for writes to what exists, the owner before the write, which
//!   only a read can tell ([`Reach::owner`]).
//!
//! A bare id on a parameter that may also point at other types (`subject=x`) is a *possible*
//! patient: consent checks it (a non-patient has no blocks), the audit record does not name
//! it. Where a parameter refers to patients in a way no list can capture (`:not`, `:missing`,
//! `:above`, `_has`, chains other than `.identifier`, URNs) the reach is [`Reach::opaque`].
//! A search whose results are not bounded to named patients is not [`Reach::pinned`]: its
//! answer decides whose data it held.

use serde_json::Value;

use crate::compartment::{is_compartment_param, is_compartment_type, patients_of, pinning_params};
use crate::request::{FhirRequest, Interaction, RequestBody};
use crate::resource_type::ResourceType;

/// Whose data a request may touch. Only [`Reach::of`] makes one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    patients: Vec<String>,
    possible: Vec<String>,
    identifiers: Vec<String>,
    written: Vec<String>,
    owner: Option<Owner>,
    pinned: bool,
    opaque: bool,
    entries: Vec<Reach>,
}

/// What a write to an existing resource changes, to be read before the write: its patients
/// now are touched too (a delete removes their data, an update may move it to another patient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// `Type/id` of an update, patch or delete.
    Instance(String),
    /// A conditional write: what the search `Type?criteria` finds. The criteria are the
    /// request's decoded parameters.
    Search {
        /// The resource type searched.
        resource_type: ResourceType,
        /// The criteria, decoded, in order.
        criteria: Vec<(String, String)>,
    },
}

impl Reach {
    /// The reach of `request`; for a batch or transaction, of every entry (each also kept on
    /// its own in [`Reach::entries`]).
    pub fn of(request: &FhirRequest) -> Reach {
        let mut reach = Reach::default();
        if let Some(RequestBody::Bundle { entries, .. }) = request.body() {
            reach.pinned = true;
            for entry in entries {
                let one = Reach::of(entry);
                reach.patients.extend(one.patients.iter().cloned());
                reach.possible.extend(one.possible.iter().cloned());
                reach.identifiers.extend(one.identifiers.iter().cloned());
                reach.written.extend(one.written.iter().cloned());
                reach.pinned &= one.pinned;
                reach.opaque |= one.opaque;
                reach.entries.push(one);
            }
            reach.tidy();
            return reach;
        }
        reach.read_path(request);
        reach.read_params(request.resource_type(), request.params());
        if let Some(criteria) = request.if_none_exist() {
            reach.read_params(request.resource_type(), criteria);
        }
        match request.body() {
            Some(RequestBody::Resource(resource)) => {
                reach.written = patients_of(resource);
                // A Patient linked to another (`replaced-by`, `seealso`) reaches into hers.
                reach
                    .written
                    .extend(crate::compartment::linked_patients(resource));
                reach.read_conditional_references(resource);
                // A patient named by identifier only is looked up like `patient:identifier`.
                match crate::compartment::patient_identifiers(resource) {
                    Some(found) => reach.identifiers.extend(found),
                    None => reach.opaque = true,
                }
                // A Consent whose patient is spelled otherwise than `Patient/<id>` would never
                // be found as hers: its block would not hold.
                reach.opaque |= !crate::compartment::consent_patient_plain(resource);
            }
            // A patch may move the resource: every Patient its values spell out is written.
            Some(RequestBody::Patch { document, format }) => {
                reach.read_conditional_references(document);
                // Whose data a patch makes the resource can be assembled in more ways than any
                // rule reads (`copy` from an element nobody checks, a `reference` emptied, an
                // identifier built member by member): a JSON Patch is applied by the gateway to
                // the version it changes, and its result read ([`crate::patch::apply_json_patch`]);
                // a FHIRPath Patch that can change a compartment element cannot be applied
                // here, and is a write whose destination cannot be read first.
                // A conditional JSON Patch is not bound to a version read, so not applied
                // either: refused before anything is looked up (what a lookup found would
                // otherwise tell, by the refusal's kind, what the criteria match).
                let resource_type = request.resource_type().map(|t| t.as_str());
                let unapplied = *format == crate::request::PatchFormat::FhirPathPatch
                    || request.interaction() == crate::request::Interaction::ConditionalPatch;
                if unapplied
                    && crate::patch::touches_compartment(
                        resource_type.unwrap_or_default(),
                        *format,
                        document,
                    )
                {
                    reach.opaque = true;
                }
                let mut spelled = Vec::new();
                strings(document, &mut |text| {
                    if let Some(id) = crate::compartment::patient_reference_id(text) {
                        spelled.push(id.to_owned());
                    }
                });
                reach.written = spelled;
            }
            _ => {}
        }
        reach.owner = owner(request);
        reach.pinned = pinned(request, &reach);
        reach.tidy();
        reach
    }

    /// The reach of search parameters alone (for rules that judge the query, not the path).
    pub(crate) fn of_params(
        resource_type: Option<ResourceType>,
        params: &[(String, String)],
    ) -> Reach {
        let mut reach = Reach::default();
        reach.read_params(resource_type, params);
        reach.tidy();
        reach
    }

    /// Patients named for certain (ids), sorted, no duplicates: in the path, on parameters
    /// that only point at Patients, or as `Patient/<id>` in any spelling.
    pub fn patients(&self) -> &[String] {
        &self.patients
    }

    /// Bare ids on parameters that may point at a Patient or at something else.
    pub fn possible(&self) -> &[String] {
        &self.possible
    }

    /// Patients named by identifier (the token as the client wrote it, `system|value`): the
    /// gateway resolves them through the backend, or refuses.
    pub fn identifiers(&self) -> &[String] {
        &self.identifiers
    }

    /// The patients of the resource a create or update writes.
    pub fn written(&self) -> &[String] {
        &self.written
    }

    /// What a write to an existing resource must read first (single requests; batch entries
    /// each have their own in [`Reach::entries`]).
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    /// Whether every result the request can return or change is in the compartment of a
    /// patient it names (so a count or a total is about those patients only).
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Whether a parameter refers to patients in a way no list captures.
    pub fn opaque(&self) -> bool {
        self.opaque
    }

    /// For a batch or transaction: each entry's reach, in order.
    pub fn entries(&self) -> &[Reach] {
        &self.entries
    }

    /// Every patient id that consent must check before the request is sent: named, possible
    /// and written (identifiers and owners come from lookups the gateway makes).
    pub fn to_check(&self) -> impl Iterator<Item = &str> {
        self.patients
            .iter()
            .chain(&self.possible)
            .chain(&self.written)
            .map(String::as_str)
    }

    /// The patients the audit record names before the answer is known: named and written.
    pub fn to_record(&self) -> impl Iterator<Item = &str> {
        self.patients
            .iter()
            .chain(&self.written)
            .map(String::as_str)
    }

    fn tidy(&mut self) {
        for list in [
            &mut self.patients,
            &mut self.possible,
            &mut self.identifiers,
            &mut self.written,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        let patients = &self.patients;
        self.possible.retain(|p| !patients.contains(p));
    }

    fn read_path(&mut self, request: &FhirRequest) {
        let on_patient = request.resource_type().map(ResourceType::as_str) == Some("Patient");
        if on_patient && let Some(id) = request.id() {
            self.patients.push(id.to_owned());
        }
        if let Some((compartment, id)) = request.compartment()
            && compartment.as_str() == "Patient"
        {
            self.patients.push(id.to_owned());
        }
    }

    /// `Patient/<id>` in any spelling among the comma-separated items of `value`.
    fn spelled_out(&mut self, value: &str) {
        for item in values(value) {
            if let Spelling::Patient(id) = patient_in(&item) {
                self.patients.push(id);
            }
        }
    }

    /// Conditional references in a written resource (`Patient?identifier=…`, R4 §3.1.0.11.2
    /// in transactions, and servers that accept them in creates): the backend resolves them,
    /// so the identifiers are looked up; other criteria no list captures.
    fn read_conditional_references(&mut self, value: &Value) {
        strings(value, &mut |text| {
            // `Patient?…`, and the spellings a server cuts down to it: `Patient/?…` (HAPI takes
            // the type before the `?` with its slashes removed), an absolute
            // `https://…/Patient?…`, another case.
            let Some((target, query)) = text.split_once('?') else {
                return;
            };
            let target = target.trim_end_matches('/');
            let type_name = target.rsplit('/').next().unwrap_or(target);
            if !type_name.eq_ignore_ascii_case("Patient") {
                return;
            }
            match crate::request::parse_form(query) {
                Ok(params)
                    if !params.is_empty()
                        && params.iter().all(|(name, value)| {
                            name == "identifier" && !value.is_empty() && !value.ends_with('|')
                        }) =>
                {
                    self.identifiers
                        .extend(params.into_iter().map(|(_, value)| value));
                }
                _ => self.opaque = true,
            }
        });
    }

    fn read_params(&mut self, resource_type: Option<ResourceType>, params: &[(String, String)]) {
        let type_name = resource_type.map(ResourceType::as_str);
        for (name, value) in params {
            if name.starts_with("_has") {
                // What it tests no list captures; a Patient it spells out is named all the same.
                self.opaque = true;
                self.spelled_out(value);
                continue;
            }
            let (base, modifier, chain) = split_name(name);
            let Some(kind) = param_kind(type_name, base) else {
                // Any other reference parameter (`focus`, `target`, `entity`, ...) that spells
                // out a Patient names her too.
                if !base.starts_with('_') {
                    self.spelled_out(value);
                }
                continue;
            };
            let modifier = match modifier {
                None => None,
                Some("Patient") => Some(Target::Patient),
                Some("identifier") => Some(Target::Identifier),
                Some(m) if ResourceType::parse(m).is_some() => continue,
                Some(_) => {
                    // `:missing`, `:not`, `:above`, `:below`, `:text`, ...: everyone or anyone.
                    self.opaque = true;
                    continue;
                }
            };
            match chain {
                // `subject:Patient.identifier=...`: the same as `subject:identifier=...` for
                // a Patient target.
                Some("identifier") if kind != ParamKind::PatientId => {
                    self.identifiers.extend(values(value));
                    continue;
                }
                Some(_) => {
                    self.opaque = true;
                    self.spelled_out(value);
                    continue;
                }
                None => {}
            }
            if modifier == Some(Target::Identifier) || kind == ParamKind::PatientIdentifier {
                for token in values(value) {
                    // `system|` (any value in a system) or `|value`-less tokens match many.
                    if token.ends_with('|') {
                        self.opaque = true;
                    } else {
                        self.identifiers.push(token);
                    }
                }
                continue;
            }
            for item in values(value) {
                match patient_in(&item) {
                    Spelling::Patient(id) => self.patients.push(id),
                    Spelling::Bare(id) => {
                        let only_patients = kind == ParamKind::PatientId
                            || kind == ParamKind::PatientOnly
                            || modifier == Some(Target::Patient);
                        if only_patients {
                            self.patients.push(id);
                        } else {
                            self.possible.push(id);
                        }
                    }
                    Spelling::Other => {}
                    Spelling::Unplaceable => self.opaque = true,
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Patient,
    Identifier,
}

/// How a search parameter relates to Patients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParamKind {
    /// `_id` on Patient: values are Patient ids.
    PatientId,
    /// `identifier` on Patient.
    PatientIdentifier,
    /// `patient`: a reference that only ever points at a Patient.
    PatientOnly,
    /// A reference that may point at a Patient or at other types (`subject`, `performer`,
    /// `link` on Patient, ...).
    MaybePatient,
}

fn param_kind(type_name: Option<&str>, base: &str) -> Option<ParamKind> {
    match (type_name, base) {
        (Some("Patient"), "_id") => Some(ParamKind::PatientId),
        (Some("Patient"), "identifier") => Some(ParamKind::PatientIdentifier),
        (Some("Patient"), "link") => Some(ParamKind::MaybePatient),
        (Some("Patient"), _) => None,
        (_, "patient") => Some(ParamKind::PatientOnly),
        (_, "subject") => Some(ParamKind::MaybePatient),
        (Some(t), _) if pinning_params(t).any(|p| p == base) => Some(ParamKind::MaybePatient),
        // Any compartment parameter name may point at a Patient: a lenient server may read
        // one that R4 does not define for this type, or a system search searches every type.
        (_, _) if is_compartment_param(base) => Some(ParamKind::MaybePatient),
        _ => None,
    }
}

/// A search parameter name's parts (R4 §3.1.1.5.5, §3.1.1.4.11): `subject:Patient.name` is
/// (`subject`, `Patient`, `name`).
fn split_name(name: &str) -> (&str, Option<&str>, Option<&str>) {
    let (head, chain) = match name.split_once('.') {
        Some((head, chain)) => (head, Some(chain)),
        None => (name, None),
    };
    match head.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier), chain),
        None => (head, None, chain),
    }
}

/// The comma-separated alternatives of a parameter value (R4 §3.1.1.5.5; `\,` is an escaped
/// comma, not a separator).
fn values(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items.retain(|item| !item.is_empty());
    items
}

/// What one reference value names.
#[derive(Debug, PartialEq, Eq)]
enum Spelling {
    /// `Patient/<id>`, relative or absolute, any version.
    Patient(String),
    /// A bare id: whatever type the parameter points at.
    Bare(String),
    /// Another type.
    Other,
    /// A reference no list can place (URN, fragment, a URL that is no FHIR reference).
    Unplaceable,
}

fn patient_in(value: &str) -> Spelling {
    let value = value.trim();
    if value.starts_with("urn:") || value.starts_with('#') || value.contains('?') {
        return Spelling::Unplaceable;
    }
    // `[base/]Type/id[/_history/vid]`: the type and id are the last two segments before any
    // `_history`.
    let without_version = match value.find("/_history/") {
        Some(index) => &value[..index],
        None => value,
    };
    let segments: Vec<&str> = without_version.split('/').collect();
    match segments.as_slice() {
        [id] if crate::request::is_valid_id(id) => Spelling::Bare((*id).to_owned()),
        [.., kind, id] if *kind == "Patient" && crate::request::is_valid_id(id) => {
            Spelling::Patient((*id).to_owned())
        }
        [.., kind, id]
            if ResourceType::parse(kind).is_some() && crate::request::is_valid_id(id) =>
        {
            Spelling::Other
        }
        _ => Spelling::Unplaceable,
    }
}

/// Search result parameters (R4 §3.1.1.5.5.x): they shape the answer, not what matches.
fn is_result_param(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(
        base,
        "_sort"
            | "_count"
            | "_include"
            | "_revinclude"
            | "_summary"
            | "_total"
            | "_elements"
            | "_contained"
            | "_containedType"
            | "_offset"
    )
}

/// Hands every string in `value` (at any depth) to `visit`.
fn strings(value: &Value, visit: &mut dyn FnMut(&str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|item| strings(item, visit)),
        Value::Object(map) => map.values().for_each(|item| strings(item, visit)),
        _ => {}
    }
}

fn owner(request: &FhirRequest) -> Option<Owner> {
    let resource_type = request.resource_type()?;
    // A stored Bundle (a document, a message) holds whoever its entries are about; a Contract,
    // a Device, a Linkage outside the compartment still name theirs.
    if !crate::compartment::names_patients(resource_type.as_str())
        && resource_type.as_str() != "Bundle"
    {
        return None;
    }
    let matching = |params: &[(String, String)]| -> Vec<(String, String)> {
        params
            .iter()
            .filter(|(name, _)| !is_result_param(name))
            .cloned()
            .collect()
    };
    match request.interaction() {
        // A conditional create answers with what its criteria find, if anything.
        Interaction::Create => request.if_none_exist().map(|criteria| Owner::Search {
            resource_type,
            criteria: matching(criteria),
        }),
        Interaction::Update | Interaction::Patch | Interaction::Delete => Some(Owner::Instance(
            format!("{}/{}", resource_type.as_str(), request.id()?),
        )),
        // An operation on an instance (`$meta`, `$validate`, `$document`) answers with
        // something else than the instance: whose it is must be read first, for consent and
        // the audit record alike.
        Interaction::Operation if request.acts_as() == Interaction::Read => Some(Owner::Instance(
            format!("{}/{}", resource_type.as_str(), request.id()?),
        )),
        Interaction::ConditionalUpdate
        | Interaction::ConditionalPatch
        | Interaction::ConditionalDelete => Some(Owner::Search {
            resource_type,
            // What the server matches on: result parameters (`_elements`, `_count`, ...) shape
            // a search's answer, and a server may ignore them in a conditional write's match.
            criteria: matching(request.params()),
        }),
        _ => None,
    }
}

/// Whether every result of `request` lies in the compartment of a patient `reach` names.
fn pinned(request: &FhirRequest, reach: &Reach) -> bool {
    if reach.opaque {
        return false;
    }
    let type_name = request.resource_type().map(ResourceType::as_str);
    // A parameter pins when every value names a Patient: `Patient/x` in any spelling; a bare
    // id on `patient`, `subject` or with `:Patient`; an identifier only where the parameter
    // points at nothing but Patients. `performer=x` may be a Practitioner, whose results are
    // anyone's.
    let names_patients = |base_ok: &dyn Fn(&str) -> bool| {
        request.params().iter().any(|(name, value)| {
            let (base, modifier, chain) = split_name(name);
            // `subject=x`: x is checked as a patient (a Group or Device of that id would have
            // results in no patient's compartment by `subject`).
            let bare_pins = base == "patient" || base == "subject" || modifier == Some("Patient");
            let only_patients = base == "patient"
                || modifier == Some("Patient")
                || (type_name == Some("Patient") && (base == "_id" || base == "identifier"));
            let by_identifier = modifier == Some("identifier")
                || chain == Some("identifier")
                || (type_name == Some("Patient") && base == "identifier");
            let items = values(value);
            base_ok(base)
                && matches!(modifier, None | Some("Patient" | "identifier"))
                && matches!(chain, None | Some("identifier"))
                && !items.is_empty()
                && items.iter().all(|item| {
                    if by_identifier {
                        only_patients
                    } else {
                        match patient_in(item) {
                            Spelling::Patient(_) => true,
                            Spelling::Bare(_) => only_patients || bare_pins,
                            Spelling::Other | Spelling::Unplaceable => false,
                        }
                    }
                })
        })
    };
    match request.acts_as() {
        Interaction::SearchCompartment => {
            request.compartment().map(|(t, _)| t.as_str()) == Some("Patient")
        }
        Interaction::SearchType
        | Interaction::ConditionalUpdate
        | Interaction::ConditionalPatch
        | Interaction::ConditionalDelete => match type_name {
            Some("Patient") => names_patients(&|base| base == "_id" || base == "identifier"),
            Some(t) if is_compartment_type(t) => {
                names_patients(&|base| base == "patient" || pinning_params(t).any(|p| p == base))
            }
            // A stored Bundle holds anyone's data.
            Some("Bundle") => false,
            // Reference data names no patient; `_revinclude` on it reaches into records.
            _ => !request
                .params()
                .iter()
                .any(|(name, _)| name.starts_with("_revinclude")),
        },
        Interaction::Read
        | Interaction::Vread
        | Interaction::HistoryInstance
        | Interaction::Update
        | Interaction::Patch
        | Interaction::Delete
        | Interaction::Operation => type_name == Some("Patient") && request.id().is_some(),
        Interaction::Capabilities => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_on_unescaped_commas() {
        assert_eq!(values("a,b"), ["a", "b"]);
        assert_eq!(values("a\\,b"), ["a\\,b"]);
        assert_eq!(values(""), Vec::<String>::new());
    }

    #[test]
    fn reference_spellings_are_placed() {
        let cases = [
            ("Patient/anne", Spelling::Patient("anne".into())),
            ("Patient/anne/_history/3", Spelling::Patient("anne".into())),
            (
                "https://fhir.example/R4/Patient/anne",
                Spelling::Patient("anne".into()),
            ),
            ("anne", Spelling::Bare("anne".into())),
            ("Group/g1", Spelling::Other),
            ("urn:uuid:1234", Spelling::Unplaceable),
            ("Patient/", Spelling::Unplaceable),
            ("Patient?identifier=x", Spelling::Unplaceable),
        ];
        for (value, expected) in cases {
            assert_eq!(patient_in(value), expected, "{value}");
        }
    }
}
