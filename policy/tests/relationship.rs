//! The treatment-relationship table: one row per piece of evidence and emergency claim, the
//! verdict for Dr. Kjær (authorisation NS363, `Practitioner/prac-ns363`, her role
//! `PractitionerRole/role-ns363` at `Organization/org-laegehuset`) about Anne on 2026-12-01,
//! with a window of 90 days back and 30 ahead:
//!
//! `type status | patient element=reference | caller element=reference | time | claim | expected`
//!
//! `time` is `-` (none), `period=<start>..<end>` (either side may be empty), `at=<dateTime>`
//! (`authoredOn` / `occurrenceDateTime`) or `appointment=<start>..<end>`; `claim` is `-`,
//! `emergency` (EMERGENCY without a reason) or `emergency+reason`; `expected` is `related`,
//! `vaerdispring` or `refused`.

use portvagt_policy::consent::{AUTHORIZATION_SYSTEM, CallerIds, Emergency};
use portvagt_policy::relationship::{RelationVerdict, Window, decide, evidence};
use serde_json::{Value, json};

const NOW: i64 = 1_796_083_200;
const DAY: i64 = 86_400;

const CASES: &str = r"
# --- what names the professional, per type -------------------------------------------------------
EpisodeOfCare active      | patient=Patient/pat-anne | managingOrganization=Organization/org-laegehuset | period=2019-04-01..  | -                | related
EpisodeOfCare active      | patient=Patient/pat-anne | careManager=Practitioner/prac-ns363            | -                    | -                | related
EpisodeOfCare active      | patient=Patient/pat-anne | careManager=Practitioner/prac-other            | -                    | -                | refused
EpisodeOfCare active      | patient=Patient/pat-bo   | careManager=Practitioner/prac-ns363            | -                    | -                | refused
Encounter in-progress     | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | -                    | -                | related
Encounter finished        | subject=Patient/pat-anne | participant.individual=PractitionerRole/role-ns363 | period=2026-11-02..2026-11-02 | - | related
Encounter finished        | subject=Patient/pat-anne | serviceProvider=Organization/org-laegehuset    | period=2026-09-05..2026-09-05 | - | related
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=2026-08-01..2026-08-31 | - | refused
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | -                    | -                | refused
Encounter cancelled       | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | -                    | -                | refused
Encounter entered-in-error | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | -                   | -                | refused
Encounter in-progress     | subject=Patient/pat-anne | reasonReference=Practitioner/prac-ns363        | -                    | -                | refused
Encounter in-progress     | patient=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | -                    | -                | refused
CareTeam active           | subject=Patient/pat-anne | participant.member=Practitioner/prac-ns363     | -                    | -                | related
CareTeam active           | subject=Patient/pat-anne | participant.onBehalfOf=Organization/org-laegehuset | -                | -                | related
CareTeam inactive         | subject=Patient/pat-anne | participant.member=Practitioner/prac-ns363     | period=2025-01-01..2025-06-30 | - | refused
CareTeam proposed         | subject=Patient/pat-anne | participant.member=Practitioner/prac-ns363     | -                    | -                | refused
# --- care that is over ends: a start alone is when it was, an empty period is no time ----------------
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=2024-03-12..  | -                | refused
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=2026-11-20..  | -                | related
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=..            | -                | refused
CareTeam inactive         | subject=Patient/pat-anne | participant.member=Practitioner/prac-ns363     | period=2020-01-01..  | -                | refused
Appointment fulfilled     | participant.actor=Patient/pat-anne | participant.actor=Practitioner/prac-ns363 | appointment=2023-05-01T10:00:00Z.. | - | refused
Encounter in-progress     | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=..            | -                | related
Encounter in-progress     | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=2019-01-01..  | -                | related
ServiceRequest active     | subject=Patient/pat-anne | performer=Organization/org-laegehuset          | at=2026-11-20        | -                | related
ServiceRequest active     | subject=Patient/pat-anne | requester=Practitioner/prac-ns363              | at=2025-01-02        | -                | related
ServiceRequest completed  | subject=Patient/pat-anne | performer=Practitioner/prac-ns363              | at=2025-01-02        | -                | refused
ServiceRequest draft      | subject=Patient/pat-anne | performer=Practitioner/prac-ns363              | at=2026-11-30        | -                | refused
ServiceRequest revoked    | subject=Patient/pat-anne | performer=Practitioner/prac-ns363              | at=2026-11-30        | -                | refused
Appointment booked        | participant.actor=Patient/pat-anne | participant.actor=Practitioner/prac-ns363 | appointment=2026-12-20T10:00:00Z..2026-12-20T10:20:00Z | - | related
Appointment booked        | participant.actor=Patient/pat-anne | participant.actor=Practitioner/prac-ns363 | appointment=2027-03-01T10:00:00Z..2027-03-01T10:20:00Z | - | refused
Appointment booked        | participant.actor=Patient/pat-anne | participant.actor=Practitioner/prac-ns363 | appointment=2019-05-01T10:00:00Z.. | - | refused
Appointment cancelled     | participant.actor=Patient/pat-anne | participant.actor=Practitioner/prac-ns363 | - | - | refused
Appointment noshow        | participant.actor=Patient/pat-anne | participant.actor=Practitioner/prac-ns363 | - | - | refused
# --- spellings of the same references --------------------------------------------------------------
EpisodeOfCare active      | patient=https://fhir.example/R4/Patient/pat-anne | careManager=https://fhir.example/R4/Practitioner/prac-ns363/_history/2 | - | - | related
EpisodeOfCare active      | patient=Patient/pat-anne2 | careManager=Practitioner/prac-ns363           | -                    | -                | refused
EpisodeOfCare active      | patient=Patient/pat-anne | careManager=Practitioner/prac-ns3630           | -                    | -                | refused
EpisodeOfCare active      | patient=Patient/pat-anne | careManager=#prac-ns363                        | -                    | -                | refused
# --- værdispring -----------------------------------------------------------------------------------
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=2024-03-12..2024-03-12 | emergency | refused
Encounter finished        | subject=Patient/pat-anne | participant.individual=Practitioner/prac-ns363 | period=2024-03-12..2024-03-12 | emergency+reason | vaerdispring
EpisodeOfCare active      | patient=Patient/pat-anne | careManager=Practitioner/prac-ns363            | -                    | emergency+reason | related
";

fn caller() -> CallerIds {
    CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), "NS363".into())],
        references: vec![
            "Practitioner/prac-ns363".into(),
            "PractitionerRole/role-ns363".into(),
            "Organization/org-laegehuset".into(),
        ],
    }
}

/// Sets `path` (dot-separated; `participant` is a list, the rest single) to a reference.
fn put(resource: &mut Value, path: &str, reference: &str) {
    let reference = json!({ "reference": reference });
    match path.split_once('.') {
        Some((list, element)) => {
            let items = resource[list].as_array_mut().map(std::mem::take);
            let mut items = items.unwrap_or_default();
            items.push(json!({ element: reference }));
            resource[list] = Value::Array(items);
        }
        None if ["performer", "managingOrganization"].contains(&path)
            && resource["resourceType"] != "EpisodeOfCare" =>
        {
            resource[path] = json!([reference]);
        }
        None => resource[path] = reference,
    }
}

fn resource(head: &str, patient: &str, named: &str, time: &str) -> Value {
    let (resource_type, status) = head.split_once(' ').expect("type status");
    let mut resource = json!({ "resourceType": resource_type, "id": "x", "status": status });
    for assignment in [patient, named] {
        let (path, reference) = assignment.split_once('=').expect("element=reference");
        put(&mut resource, path, reference);
    }
    let range = |text: &str| -> (Option<String>, Option<String>) {
        let (start, end) = text.split_once("..").expect("start..end");
        let side = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        (side(start), side(end))
    };
    if let Some(period) = time.strip_prefix("period=") {
        let (start, end) = range(period);
        resource["period"] = json!({});
        if let Some(start) = start {
            resource["period"]["start"] = json!(start);
        }
        if let Some(end) = end {
            resource["period"]["end"] = json!(end);
        }
    } else if let Some(at) = time.strip_prefix("at=") {
        resource["authoredOn"] = json!(at);
    } else if let Some(appointment) = time.strip_prefix("appointment=") {
        let (start, end) = range(appointment);
        if let Some(start) = start {
            resource["start"] = json!(start);
        }
        if let Some(end) = end {
            resource["end"] = json!(end);
        }
    } else {
        assert_eq!(time, "-", "time");
    }
    resource
}

#[test]
fn the_relationship_table() {
    let window = Window {
        past: 90 * DAY,
        ahead: 30 * DAY,
    };
    let mut failures = Vec::new();
    for line in CASES.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [head, patient, named, time, claim, expected] = cells[..] else {
            panic!("a row has six cells: {line}");
        };
        let resource = resource(head, patient, named, time);
        let found = evidence([&resource], "pat-anne", &caller(), window, NOW);
        let emergency = match claim {
            "-" => Emergency::None,
            "emergency" => Emergency::WithoutReason,
            "emergency+reason" => Emergency::WithReason("bevidstløs"),
            other => panic!("claim {other}"),
        };
        let verdict = match decide(found.as_deref(), emergency) {
            RelationVerdict::Related { .. } => "related",
            RelationVerdict::Vaerdispring => "vaerdispring",
            RelationVerdict::Refused => "refused",
        };
        if verdict != expected {
            failures.push(format!("{line}\n    got {verdict}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
