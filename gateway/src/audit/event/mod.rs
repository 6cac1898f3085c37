//! FHIR R4 `AuditEvent`s in the shape of IHE BALP (Basic Audit Log Patterns) for RESTful
//! access: `type` rest, `subtype` the interaction, `action` C/R/U/D/E, the user (requestor) with
//! their identifiers, role and purpose, their organisation, the client system, this gateway,
//! and the entities: the patient, the resource, the raw query, the request id.
//!
//! A search whose answer is about several patients becomes one event per patient (BALP
//! PatientQuery), so every citizen's log is complete on its own.
//! <https://profiles.ihe.net/ITI/BALP/>
//!
//! This file holds the facts, the per-patient events and the resource's shape as written;
//! `base` fills in what all events of one access share and `agents` who took part. No JSON is
//! parsed or built as a tree here: each event is written once from its typed parts.

mod agents;
mod base;

use std::borrow::Cow;
use std::net::IpAddr;

use portvagt_policy::FhirRequest;
use serde::Serialize;
use serde::ser::SerializeSeq as _;
use time::OffsetDateTime;

use self::base::base_event;
use crate::auth::Principal;
use crate::tls::PeerIdentity;

const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// The code system of the break-the-glass reason detail and of Portvagt's own subtypes.
pub const PORTVAGT_AUDIT: &str = "urn:portvagt:audit";

/// What kind of access was audited.
#[derive(Debug, Clone, Copy)]
pub enum AccessKind<'a> {
    /// A FHIR REST request (classified, or refused before classification).
    Fhir(Option<&'a FhirRequest>),
    /// `POST /token`: a SAML assertion exchanged (or refused).
    TokenExchange,
}

/// Everything one audit record is made from.
#[derive(Debug)]
pub struct AccessFacts<'a> {
    pub request_id: &'a str,
    /// The W3C trace id (hex), if the request was traced.
    pub trace_id: Option<&'a str>,
    pub recorded: OffsetDateTime,
    pub method: &'a str,
    /// The request target as received, with its query (the raw query of a search).
    pub target: &'a str,
    pub kind: AccessKind<'a>,
    pub status: u16,
    /// The stable reason code of a refusal.
    pub reason: Option<&'a str>,
    pub principal: Option<&'a Principal>,
    pub peer: Option<&'a PeerIdentity>,
    pub client_ip: Option<IpAddr>,
    /// The patients the access was about.
    pub patients: &'a [String],
    /// A break-the-glass access: its reason, and the patients whose blocks it set aside (or
    /// whose data it read without a treatment relationship: værdispring).
    pub break_glass: Option<(&'a str, &'a [String])>,
    /// Per patient, the basis of the access where the treatment relationship is checked
    /// (`relationship <evidence>`, `vaerdispring`): the patient entity's `access-basis` detail.
    pub bases: &'a [(String, String)],
    /// A citizen's own block made or lifted: the Consent, what changed and whom it blocks (the
    /// resource entity's `citizen-block` and `blocked` details).
    pub citizen_block: Option<&'a crate::context::CitizenBlockRecord>,
}

/// This gateway, as the audit source and the destination agent.
#[derive(Debug, Clone)]
pub struct AuditSource {
    /// The instance name (`AuditEvent.source.observer`).
    pub observer: String,
    /// The FHIR base URL clients see (`AuditEvent.source.site`).
    pub site: String,
}

/// The AuditEvents for one access, as JSON: one per patient it was about (at least one).
///
/// Written straight from typed parts (no intermediate JSON tree): this runs on every request.
pub fn audit_events(facts: &AccessFacts<'_>, source: &AuditSource) -> Vec<Vec<u8>> {
    let mut event = base_event(facts, source);
    // Cannot fail: plain structs, sequences and strings (no maps with odd keys, no custom errors).
    let serialize = |event: &Event<'_>| serde_json::to_vec(event).unwrap_or_default();
    if facts.patients.is_empty() {
        return vec![serialize(&event)];
    }
    let common_purposes = event.purpose_of_event.len();
    let mut events = Vec::with_capacity(facts.patients.len());
    for patient in facts.patients {
        // Break-the-glass is marked on the events of the patients whose blocks it lifted.
        let broken = facts
            .break_glass
            .filter(|(_, patients)| patients.iter().any(|p| p == patient))
            .map(|(reason, _)| reason);
        event.purpose_of_event.truncate(common_purposes);
        if broken.is_some() {
            event.purpose_of_event.push(Concept::one(Coding::new(
                ACT_REASON,
                "BTG",
                Some("break the glass"),
            )));
        }
        event.entity.patient = Some(Entity {
            what: Some(What::reference(format!("Patient/{patient}"))),
            r#type: Coding::new(ENTITY_TYPE, "1", Some("Person")),
            role: Some(Coding::new(OBJECT_ROLE, "1", Some("Patient"))),
            detail: broken
                .map(|reason| Detail {
                    r#type: "break-glass-reason",
                    value_string: reason,
                })
                .into_iter()
                .chain(
                    facts
                        .bases
                        .iter()
                        .filter(|(p, _)| p == patient)
                        .map(|(_, basis)| Detail {
                            r#type: "access-basis",
                            value_string: basis,
                        }),
                )
                .collect(),
            ..Entity::default()
        });
        events.push(serialize(&event));
    }
    events
}

type Text<'a> = Cow<'a, str>;

/// `AuditEvent`, in the order its elements are written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    resource_type: &'static str,
    r#type: Coding<'a>,
    subtype: [Coding<'a>; 1],
    action: &'static str,
    recorded: String,
    outcome: &'static str,
    outcome_desc: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_event: Vec<Concept<'a>>,
    agent: Vec<Agent<'a>>,
    source: Source<'a>,
    entity: Entities<'a>,
}

/// `entity`: the patient's (when the access was about one) first, then the others.
struct Entities<'a> {
    patient: Option<Entity<'a>>,
    others: Vec<Entity<'a>>,
}

impl Serialize for Entities<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(
            usize::from(self.patient.is_some()) + self.others.len(),
        ))?;
        for entity in self.patient.iter().chain(&self.others) {
            seq.serialize_element(entity)?;
        }
        seq.end()
    }
}

#[derive(Serialize, Clone)]
struct Coding<'a> {
    system: &'a str,
    code: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'a str>,
}

impl<'a> Coding<'a> {
    fn new(system: &'a str, code: impl Into<Text<'a>>, display: Option<&'a str>) -> Self {
        Coding {
            system,
            code: code.into(),
            display,
        }
    }
}

/// A CodeableConcept of one coding.
#[derive(Serialize, Clone)]
struct Concept<'a> {
    coding: [Coding<'a>; 1],
}

impl<'a> Concept<'a> {
    fn one(coding: Coding<'a>) -> Self {
        Concept { coding: [coding] }
    }
}

#[derive(Serialize, Default)]
struct Identifier<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Text<'a>>,
    value: Text<'a>,
}

#[derive(Serialize, Default)]
struct Who<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<Text<'a>>,
}

#[derive(Serialize)]
struct Network<'a> {
    address: Text<'a>,
    r#type: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OtherId<'a> {
    url: &'static str,
    value_identifier: Identifier<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Agent<'a> {
    r#type: Concept<'a>,
    who: Who<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    requestor: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    role: Vec<Concept<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    purpose_of_use: Vec<Concept<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<Network<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extension: Vec<OtherId<'a>>,
}

impl<'a> Agent<'a> {
    fn new(r#type: Coding<'a>, who: Who<'a>, requestor: bool) -> Self {
        Agent {
            r#type: Concept::one(r#type),
            who,
            alt_id: None,
            name: None,
            requestor,
            role: Vec::new(),
            policy: Vec::new(),
            purpose_of_use: Vec::new(),
            network: None,
            extension: Vec::new(),
        }
    }
}

#[derive(Serialize)]
struct Display<'a> {
    display: &'a str,
}

#[derive(Serialize)]
struct Source<'a> {
    site: &'a str,
    observer: Display<'a>,
    r#type: [Coding<'a>; 1],
}

#[derive(Serialize, Default)]
struct What<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identifier: Option<Identifier<'a>>,
}

impl<'a> What<'a> {
    fn reference(reference: String) -> Self {
        What {
            reference: Some(reference.into()),
            identifier: None,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    r#type: &'static str,
    value_string: &'a str,
}

#[derive(Serialize)]
struct Entity<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<What<'a>>,
    r#type: Coding<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    detail: Vec<Detail<'a>>,
}

impl Default for Entity<'_> {
    fn default() -> Self {
        Entity {
            what: None,
            r#type: Coding::new(ENTITY_TYPE, "2", Some("System Object")),
            role: None,
            query: None,
            description: None,
            detail: Vec::new(),
        }
    }
}
