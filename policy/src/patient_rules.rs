//! Patient-context scopes (`patient/...`, SMART App Launch 2.2 §3.1): the token's `patient`
//! claim bounds what the scope grants to that patient's compartment.
//!
//! - Reads of compartment types are allowed and the answer is checked (obligation); the
//!   `Patient` resource only with the patient's own id; shared reference data freely.
//! - Searches are pinned to the patient: a compartment parameter naming another patient is
//!   refused, a search naming none is narrowed by adding one, and the answer is checked.
//!   Chained parameters and `_has` are refused (they test other patients' data even when
//!   the answer is filtered); system-wide searches and type/system history are refused.
//! - Creates must carry a body in the compartment. Other writes are refused: the existing
//!   target cannot be shown to be the patient's without reading it first.
//! - `$everything` only on the patient's own record.

use crate::compartment::{
    Membership, is_compartment_type, is_shared_type, membership, narrowing_param, pinning_params,
};
use crate::operations::Kind;
use crate::reach::Reach;
use crate::request::{FhirRequest, Interaction, RequestBody};
use crate::resource_type::ResourceType;
use crate::scope::Scope;
use crate::shape::{granular, is_everything, reaches_other_types};
use crate::verdict::{DenyReason, Obligations};

/// Checks `request` under a patient-context `scope` for `patient`.
pub(crate) fn check(
    request: &FhirRequest,
    scope: &Scope,
    patient: &str,
) -> Result<Obligations, DenyReason> {
    if reaches_other_types(request) && !scope.covers_every_type() {
        return Err(DenyReason::SearchReachesOtherTypes);
    }
    if tests_other_resources(request) {
        return Err(DenyReason::OutsideCompartment);
    }
    // Whatever the interaction, no parameter may name another patient.
    pins_only_the_patient(request, patient)?;
    // `_elements` and `_summary` can hide the references the answer is checked on.
    if crate::consent::hides_references(request) {
        return Err(DenyReason::OutsideCompartment);
    }
    let granular = granular(request, scope)?;
    let mut add_params = granular.add_params;
    let checked = Obligations {
        compartment: Some(patient.to_owned()),
        restriction: granular.restriction,
        ..Obligations::default()
    };
    let type_name = request.resource_type().map(ResourceType::as_str);
    // An operation that reads its instance (`$document`, `$meta`) answers with something else
    // than the instance, which cannot show whose it is: the instance is read first.
    let instance_operation = request.interaction() == Interaction::Operation;
    // Declared operations that are searches or instance reads are decided as those.
    match request.acts_as() {
        Interaction::Capabilities => Ok(Obligations::default()),
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => match type_name {
            Some("Patient") if request.id() == Some(patient) && instance_operation => {
                Ok(Obligations {
                    verify_target: true,
                    ..checked
                })
            }
            Some("Patient") if request.id() == Some(patient) => Ok(checked),
            Some("Patient") => Err(DenyReason::OutsideCompartment),
            Some(t) if is_compartment_type(t) && instance_operation => Ok(Obligations {
                verify_target: true,
                ..checked
            }),
            // An operation on reference data answers with something that is neither the
            // instance nor checkable as anybody's: not for a patient's app.
            Some(_) if instance_operation => Err(DenyReason::OutsideCompartment),
            Some(t) if is_compartment_type(t) => Ok(checked),
            // Shared reference data: still checked, so nothing else rides along.
            Some(t) if is_shared_type(t) => Ok(checked),
            _ => Err(DenyReason::OutsideCompartment),
        },
        Interaction::SearchType => match type_name {
            // Every answer is checked: `_revinclude` on shared data reaches patients' records.
            Some(t) if is_shared_type(t) => Ok(Obligations {
                add_params,
                ..checked
            }),
            Some(t) if is_compartment_type(t) => {
                let pinned = pin(request, t, patient)?;
                // Pinned by what only names her (performer): matches about others count in
                // the backend's total, and the check takes them out of the entries only.
                let hide_total = pinned.is_empty()
                    && t != "Patient"
                    && !request.params().iter().any(|(name, value)| {
                        let (base, modifier) = name
                            .split_once(':')
                            .map_or((name.as_str(), None), |(b, m)| (b, Some(m)));
                        matches!(base, "patient" | "subject")
                            && modifier.is_none_or(|m| m == "Patient")
                            && (value == patient || value.strip_prefix("Patient/") == Some(patient))
                    });
                add_params.extend(pinned);
                Ok(Obligations {
                    add_params,
                    hide_total,
                    ..checked
                })
            }
            _ => Err(DenyReason::OutsideCompartment),
        },
        Interaction::SearchCompartment => match request.compartment() {
            Some((compartment, id))
                if compartment.as_str() == "Patient"
                    && id == patient
                    && type_name.is_none_or(is_compartment_type) =>
            {
                // The compartment holds what merely names her (a performer): a count of it
                // is pinned to what is about her, as a search of the type would be.
                let count = crate::consent::count_only(request);
                if count {
                    let t = type_name.ok_or(DenyReason::CountNotPinned)?;
                    add_params.extend(pin(request, t, patient)?);
                }
                Ok(Obligations {
                    add_params,
                    // Its matches include what only names her: their total is not hers.
                    hide_total: !count,
                    ..checked
                })
            }
            _ => Err(DenyReason::OutsideCompartment),
        },
        Interaction::Operation if is_everything(request) && request.id() == Some(patient) => {
            Ok(checked)
        }
        // Terminology, validation: answered with reference data, nobody's.
        Interaction::Operation if request.operation_kind() == Some(Kind::Reference) => {
            Ok(Obligations::default())
        }
        // A conditional create is a search the pin rules do not see: refused.
        Interaction::Create if request.if_none_exist().is_some() => {
            Err(DenyReason::WriteNotVerifiable)
        }
        // Citizens do not create patients, audit records or provenance about themselves.
        Interaction::Create
            if matches!(type_name, Some("Patient" | "AuditEvent" | "Provenance")) =>
        {
            Err(DenyReason::OutsideCompartment)
        }
        Interaction::Create => match request.body() {
            Some(RequestBody::Resource(resource)) if stays_hers(resource, patient) => Ok(checked),
            Some(_) => Err(DenyReason::OutsideCompartment),
            None => Err(DenyReason::WriteNotVerifiable),
        },
        // Writes to an existing resource: what is written must be the patient's, and so must what
        // is overwritten, which the gateway reads first (obligation).
        Interaction::Update | Interaction::Patch | Interaction::Delete => {
            let verified = Obligations {
                verify_target: true,
                ..checked
            };
            match (type_name, request.interaction(), request.body()) {
                (Some("Patient"), _, _) if request.id() != Some(patient) => {
                    Err(DenyReason::OutsideCompartment)
                }
                (Some("Patient"), Interaction::Delete, _) => Err(DenyReason::OutsideCompartment),
                (Some(t), _, _) if !is_compartment_type(t) => Err(DenyReason::OutsideCompartment),
                (_, Interaction::Delete, _) => Ok(verified),
                (_, Interaction::Update, Some(RequestBody::Resource(resource)))
                    if stays_hers(resource, patient) =>
                {
                    Ok(verified)
                }
                // A patch that leaves whose data it is alone; or a JSON Patch, which the gateway
                // applies to the target it reads and judges by its result (the obligation).
                (Some(t), Interaction::Patch, Some(RequestBody::Patch { document, format }))
                    if *format == crate::request::PatchFormat::JsonPatch
                        || !crate::patch::touches_compartment(t, *format, document) =>
                {
                    Ok(verified)
                }
                (_, _, None) => Err(DenyReason::WriteNotVerifiable),
                _ => Err(DenyReason::OutsideCompartment),
            }
        }
        Interaction::ConditionalUpdate
        | Interaction::ConditionalPatch
        | Interaction::ConditionalDelete => Err(DenyReason::WriteNotVerifiable),
        Interaction::Operation
        | Interaction::SearchSystem
        | Interaction::HistoryType
        | Interaction::HistorySystem
        | Interaction::BatchOrTransaction => Err(DenyReason::OutsideCompartment),
    }
}

/// Whether what a patient-context write leaves (an update's body, a patch's result) is
/// `patient`'s own: in her compartment and nobody else's, naming no patient by identifier, and
/// (her `Patient`) linked to nobody else's record (`link.other` reaches into theirs).
pub fn stays_hers(resource: &serde_json::Value, patient: &str) -> bool {
    membership(resource, patient) == Membership::Member
        && crate::compartment::consent_patient_plain(resource)
        && crate::compartment::linked_patients(resource)
            .iter()
            .all(|linked| linked == patient)
        && crate::compartment::patient_identifiers(resource).is_some_and(|found| found.is_empty())
}

/// Chained parameters and `_has` test other resources: even with the answer filtered, they tell
/// whether another patient's data matches. `_filter` and `_query` say what they search in a
/// language of their own, which the pin rules cannot read.
fn tests_other_resources(request: &FhirRequest) -> bool {
    request.params().iter().any(|(name, _)| {
        name.contains('.') || name.starts_with("_has") || name == "_filter" || name == "_query"
    })
}

/// No parameter may name a patient other than `patient`, in any spelling the backend resolves
/// ([`Reach`]): `Patient/<other>`, a bare id, an absolute URL, `:Patient`; nor refer to
/// patients in a way no list captures (`:missing`, `:not`, URNs, ...); nor by identifier,
/// except on Patient itself, where the search is narrowed to the patient's own id.
fn pins_only_the_patient(request: &FhirRequest, patient: &str) -> Result<(), DenyReason> {
    let reach = Reach::of_params(request.resource_type(), request.params());
    let on_patient = request
        .resource_type()
        .is_some_and(|t| t.as_str() == "Patient");
    let names_other = reach
        .patients()
        .iter()
        .chain(reach.possible())
        .any(|p| p != patient);
    // On Patient only its own `identifier` (the search is narrowed to the patient's id anyway);
    // another patient reached by identifier (`link:identifier`) is refused as before.
    let by_identifier_elsewhere = request
        .params()
        .iter()
        .any(|(name, _)| name.contains(":identifier") || name.contains(".identifier"));
    if reach.opaque()
        || names_other
        || by_identifier_elsewhere
        || (!on_patient && !reach.identifiers().is_empty())
    {
        return Err(DenyReason::OutsideCompartment);
    }
    Ok(())
}

/// The pin of a search of compartment type `t`: a compartment parameter naming the patient; if
/// none is given, one is added.
fn pin(request: &FhirRequest, t: &str, patient: &str) -> Result<Vec<(String, String)>, DenyReason> {
    // A count cannot be filtered: only the parameter that says whom the resource is about
    // (`patient`, `subject`) pins it. `performer=Patient/<own>` would count resources about
    // others that she merely performed, which a search would withhold.
    let count = crate::consent::count_only(request);
    let mut pinned = false;
    for (name, value) in request.params() {
        let (base, modifier) = match name.split_once(':') {
            Some((base, modifier)) => (base, Some(modifier)),
            None => (name.as_str(), None),
        };
        let is_pin = if t == "Patient" {
            base == "_id"
        } else if count {
            pinning_params(t).any(|p| p == base) && (base == "patient" || base == "subject")
        } else {
            pinning_params(t).any(|p| p == base)
        };
        if !is_pin {
            continue;
        }
        // Values naming anyone else were refused by `pins_only_the_patient`; what remains either
        // pins this patient or points at another type (`performer=Practitioner/x`).
        let modifier_ok = modifier.is_none() || (t != "Patient" && modifier == Some("Patient"));
        let names_patient = value == patient || value.strip_prefix("Patient/") == Some(patient);
        pinned |= modifier_ok && names_patient;
    }
    if pinned {
        return Ok(Vec::new());
    }
    let param = narrowing_param(t).ok_or(DenyReason::OutsideCompartment)?;
    // The client already used the narrowing parameter for something else (`subject=Group/x`):
    // adding ours would make it repeat with two values, which servers read differently.
    if request
        .params()
        .iter()
        .any(|(name, _)| name.split(':').next() == Some(param))
    {
        return Err(DenyReason::OutsideCompartment);
    }
    let value = if param == "_id" {
        patient.to_owned()
    } else {
        format!("Patient/{patient}")
    };
    Ok(vec![(param.to_owned(), value)])
}
