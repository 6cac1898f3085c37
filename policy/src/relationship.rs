//! The treatment relationship ("aktuel behandlingsrelation"): whether a health professional,
//! or the organisation they act for, has a reason to read a patient's data. Danish law lets a
//! professional look up a patient they are treating; otherwise only by værdispring (purpose
//! EMERGENCY with a reason), which is followed up.
//!
//! Pure: the gateway fetches the evidence (the backend's own resources, or a relation
//! service's answer) and passes the time in. What counts as evidence:
//!
//! | resource        | the patient   | names the professional or organisation            | when            |
//! |-----------------|---------------|---------------------------------------------------|-----------------|
//! | EpisodeOfCare   | `patient`     | `careManager`, `managingOrganization`             | `period`        |
//! | Encounter       | `subject`     | `participant.individual`, `serviceProvider`       | `period`        |
//! | CareTeam        | `subject`     | `participant.member`/`.onBehalfOf`, `managingOrganization` | `period` |
//! | ServiceRequest  | `subject`     | `performer`, `requester`                          | `occurrence[x]`, else `authoredOn` |
//! | Appointment     | a participant | `participant.actor` (not declined)                | `start`–`end`   |
//!
//! in a status that means care given, going on or planned (never cancelled, entered in
//! error, a draft or a no-show), and at a time that overlaps the window around now. A
//! resource that is still going on (active, in progress, booked) without a time counts; one
//! that is over without a time does not (when it was cannot be told).

use serde_json::Value;

use crate::consent::{Actor, CallerIds, Emergency, instant, relative};

/// The resource types searched for evidence, in the order they are asked.
pub const EVIDENCE_TYPES: [&str; 5] = [
    "EpisodeOfCare",
    "Encounter",
    "CareTeam",
    "ServiceRequest",
    "Appointment",
];

/// The search parameter that names the patient, per evidence type.
pub fn patient_parameter(resource_type: &str) -> Option<&'static str> {
    match resource_type {
        "EpisodeOfCare" | "Encounter" | "CareTeam" | "ServiceRequest" | "Appointment" => {
            Some("patient")
        }
        _ => None,
    }
}

/// Whether the relationship check binds a caller: a person acting in one of the `bound` roles
/// (the token's `role`, e.g. the authorisation register's profession code `7170`), unless the
/// token is the citizen's own (`the_patient`: its `fhirUser` is the Patient of its launch
/// context). A professional's launch context binds her like any other token: it names a
/// record she has open, which is no evidence that she treats its patient, and her `user/`
/// scopes reach beyond it.
pub fn binds(roles: &[String], bound: &[String], the_patient: bool) -> bool {
    !the_patient && roles.iter().any(|role| bound.iter().any(|b| b == role))
}

/// How the window around now is read: evidence counts if its time overlaps
/// `[now - past, now + ahead]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Seconds back from now (a treatment that ended within this counts).
    pub past: i64,
    /// Seconds ahead (a booked appointment or a planned episode within this counts).
    pub ahead: i64,
}

/// Whether `resource` shows a treatment relationship between `patient` (an id) and `caller`
/// at `now` (Unix seconds).
pub fn shows_relationship(
    resource: &Value,
    patient: &str,
    caller: &CallerIds,
    window: Window,
    now: i64,
) -> bool {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return false;
    };
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
    let Some(ongoing) = status_counts(resource_type, status) else {
        return false;
    };
    if !names_patient(resource_type, resource, patient)
        || !names_caller(resource_type, resource, caller)
    {
        return false;
    }
    match when(resource_type, resource, ongoing) {
        // Care that is over ends when it ended, or (said only when it began) then: it never
        // stays open; over without any time, when it was cannot be told.
        When::Read(None, None) if !ongoing => false,
        When::Read(start, end) => {
            // An appointment is at its time, whatever its status says.
            let end = if ongoing && resource_type != "Appointment" {
                end
            } else {
                end.or(start)
            };
            start.is_none_or(|start| start <= now + window.ahead)
                && end.is_none_or(|end| end >= now - window.past)
        }
        When::Absent => ongoing,
        When::Unreadable => false,
    }
}

/// The first of `resources` that shows a relationship with `patient`: its `Type/id`.
pub fn evidence<'a>(
    resources: impl IntoIterator<Item = &'a Value>,
    patient: &str,
    caller: &CallerIds,
    window: Window,
    now: i64,
) -> Option<String> {
    resources
        .into_iter()
        .find(|resource| shows_relationship(resource, patient, caller, window, now))
        .map(|resource| {
            format!(
                "{}/{}",
                resource
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                resource
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            )
        })
}

/// `Some(ongoing)` if `status` of a `resource_type` can be evidence; `ongoing` when it says the
/// care is going on or planned (then a missing time still counts). `None`: it cannot.
fn status_counts(resource_type: &str, status: &str) -> Option<bool> {
    let (ongoing, over): (&[&str], &[&str]) = match resource_type {
        "EpisodeOfCare" => (&["planned", "waitlist", "active", "onhold"], &["finished"]),
        "Encounter" => (
            &["planned", "arrived", "triaged", "in-progress", "onleave"],
            &["finished"],
        ),
        "CareTeam" => (&["active", "suspended"], &["inactive"]),
        "ServiceRequest" => (&["active", "on-hold"], &["completed"]),
        "Appointment" => (
            &["booked", "arrived", "checked-in", "pending", "waitlist"],
            &["fulfilled"],
        ),
        _ => return None,
    };
    if ongoing.contains(&status) {
        Some(true)
    } else if over.contains(&status) {
        Some(false)
    } else {
        None
    }
}

/// A reference element (`{"reference": ...}` or `{"identifier": ...}`) as an actor.
fn actor(reference: &Value) -> Option<Actor> {
    if let Some(literal) = reference.get("reference").and_then(Value::as_str) {
        return Some(Actor::Reference(literal.to_owned()));
    }
    let identifier = reference.get("identifier")?;
    Some(Actor::Identifier(
        identifier.get("system")?.as_str()?.to_owned(),
        identifier.get("value")?.as_str()?.to_owned(),
    ))
}

/// The values at `path` (object keys; arrays are walked through).
fn at<'a>(value: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    let mut current = vec![value];
    for key in path {
        let mut next = Vec::new();
        for item in current {
            match item.get(key) {
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(found) => next.push(found),
                None => {}
            }
        }
        current = next;
    }
    current
}

fn names_patient(resource_type: &str, resource: &Value, patient: &str) -> bool {
    let wanted = format!("Patient/{patient}");
    let is_patient =
        |r: &&Value| r.get("reference").and_then(Value::as_str).map(relative) == Some(&wanted);
    match resource_type {
        "EpisodeOfCare" => at(resource, &["patient"]).iter().any(is_patient),
        "Appointment" => at(resource, &["participant"])
            .iter()
            .filter(|p| accepted(p))
            .flat_map(|p| at(p, &["actor"]))
            .any(|r| is_patient(&r)),
        _ => at(resource, &["subject"]).iter().any(is_patient),
    }
}

/// An Appointment participant that has not declined.
fn accepted(participant: &Value) -> bool {
    participant.get("status").and_then(Value::as_str) != Some("declined")
}

fn names_caller(resource_type: &str, resource: &Value, caller: &CallerIds) -> bool {
    let references: Vec<&Value> = match resource_type {
        "EpisodeOfCare" => [
            at(resource, &["careManager"]),
            at(resource, &["managingOrganization"]),
        ]
        .concat(),
        "Encounter" => [
            at(resource, &["participant", "individual"]),
            at(resource, &["serviceProvider"]),
        ]
        .concat(),
        "CareTeam" => [
            at(resource, &["participant", "member"]),
            at(resource, &["participant", "onBehalfOf"]),
            at(resource, &["managingOrganization"]),
        ]
        .concat(),
        "ServiceRequest" => [at(resource, &["performer"]), at(resource, &["requester"])].concat(),
        "Appointment" => at(resource, &["participant"])
            .into_iter()
            .filter(|p| accepted(p))
            .flat_map(|p| at(p, &["actor"]))
            .collect(),
        _ => Vec::new(),
    };
    references
        .into_iter()
        .filter_map(actor)
        // A Patient named here is the patient, not the professional.
        .filter(
            |actor| !matches!(actor, Actor::Reference(r) if relative(r).starts_with("Patient/")),
        )
        .any(|actor| caller.is(&actor))
}

/// When a resource's care took place.
enum When {
    /// `[start, end]`, either side open.
    Read(Option<i64>, Option<i64>),
    /// No time given.
    Absent,
    /// A time that cannot be read: not evidence.
    Unreadable,
}

fn when(resource_type: &str, resource: &Value, ongoing: bool) -> When {
    let period = |value: &Value| {
        if !value.is_object() {
            return When::Unreadable;
        }
        let side = |key: &str, end: bool| match value.get(key) {
            None => Some(None),
            Some(item) => item.as_str().and_then(|s| instant(s, end)).map(Some),
        };
        match (side("start", false), side("end", true)) {
            (Some(start), Some(end)) => When::Read(start, end),
            _ => When::Unreadable,
        }
    };
    let point = |value: &Value| match value.as_str() {
        Some(text) => match (instant(text, false), instant(text, true)) {
            (Some(start), Some(end)) => When::Read(Some(start), Some(end)),
            _ => When::Unreadable,
        },
        None => When::Unreadable,
    };
    match resource_type {
        "ServiceRequest" => {
            if let Some(occurrence) = resource.get("occurrencePeriod") {
                period(occurrence)
            } else if let Some(occurrence) = resource.get("occurrenceDateTime") {
                point(occurrence)
            } else if let Some(authored) = resource.get("authoredOn") {
                // A referral names when it was made; one still active stays open, one
                // completed counts from that day only.
                match point(authored) {
                    When::Read(start, _) if ongoing => When::Read(start, None),
                    other => other,
                }
            } else {
                When::Absent
            }
        }
        "Appointment" => {
            if resource.get("start").is_none() && resource.get("end").is_none() {
                When::Absent
            } else {
                period(resource)
            }
        }
        _ => match resource.get("period") {
            Some(value) => period(value),
            None => When::Absent,
        },
    }
}

/// The verdict on one patient for a caller the check binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelationVerdict {
    /// A relationship was found: this is the evidence (`Type/id`, or the service's basis).
    Related {
        /// What shows it.
        evidence: String,
    },
    /// None, and værdispring (EMERGENCY with a reason) lets the access through: it is to be
    /// followed up.
    Vaerdispring,
    /// None: refused (`relationship-required`, or `break-glass-reason-required` when
    /// EMERGENCY was claimed without a reason).
    Refused,
}

/// Decides one patient: the evidence found (if any) and the caller's claim of emergency.
pub fn decide(evidence: Option<&str>, emergency: Emergency<'_>) -> RelationVerdict {
    match (evidence, emergency) {
        (Some(evidence), _) => RelationVerdict::Related {
            evidence: evidence.to_owned(),
        },
        (None, Emergency::WithReason(_)) => RelationVerdict::Vaerdispring,
        (None, Emergency::None | Emergency::WithoutReason) => RelationVerdict::Refused,
    }
}

/// What a relation service answered about one (patient, professional, organisation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAnswer {
    /// A current relationship, on this basis (the service's words, e.g. `GP list`).
    Related {
        /// Why the service says so.
        basis: String,
    },
    /// None.
    Unrelated,
}

/// Reads a relation service's answer about `patient` (README "Treatment relationship"):
/// `{"patient": "<id>", "relationship": true, "basis": "..."}` or `{"patient": "<id>",
/// "relationship": false}`. Anything else, an answer about another patient included, is not an
/// answer (`None`): the gateway refuses the access as it would with no service at all.
pub fn service_answer(answer: &Value, patient: &str) -> Option<ServiceAnswer> {
    if answer.get("patient")?.as_str()? != patient {
        return None;
    }
    match answer.get("relationship")?.as_bool()? {
        true => Some(ServiceAnswer::Related {
            basis: answer
                .get("basis")
                .and_then(Value::as_str)
                .map(|basis| basis.chars().take(200).collect())
                .unwrap_or_else(|| "relation service".to_owned()),
        }),
        false => Some(ServiceAnswer::Unrelated),
    }
}

#[cfg(test)]
mod tests;
