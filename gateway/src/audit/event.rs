//! FHIR R4 `AuditEvent`s in the shape of IHE BALP (Basic Audit Log Patterns) for RESTful
//! access: `type` rest, `subtype` the interaction, `action` C/R/U/D/E, the user (requestor) with
//! their identifiers, role and purpose, their organisation, the client system, this gateway,
//! and the entities: the patient, the resource, the raw query, the request id.
//!
//! A search whose answer is about several patients becomes one event per patient (BALP
//! PatientQuery), so every citizen's log is complete on its own.
//! <https://profiles.ihe.net/ITI/BALP/>

use std::net::IpAddr;

use base64::Engine as _;
use portvagt_policy::request::{BundleKind, RequestBody};
use portvagt_policy::{FhirRequest, Interaction};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Principal;
use crate::tls::PeerIdentity;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const OTHER_ID: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/ihe-otherId";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// The code system of the break-the-glass reason detail and of Portvagt's own subtypes.
pub const PORTVAGT_AUDIT: &str = "urn:portvagt:audit";
/// Autorisationsregister profession codes.
const ROLE_SYSTEM: &str = "urn:oid:1.2.208.176.1.3";
const CPR_SYSTEM: &str = "urn:oid:1.2.208.176.1.2";
const AUTHORIZATION_SYSTEM: &str = "https://autregweb.sst.dk";

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
    /// A break-the-glass access: its reason, and the patients whose blocks it set aside.
    pub break_glass: Option<(&'a str, &'a [String])>,
}

/// This gateway, as the audit source and the destination agent.
#[derive(Debug, Clone)]
pub struct AuditSource {
    /// The instance name (`AuditEvent.source.observer`).
    pub observer: String,
    /// The FHIR base URL clients see (`AuditEvent.source.site`).
    pub site: String,
}

/// The AuditEvents for one access: one per patient it was about (at least one).
pub fn audit_events(facts: &AccessFacts<'_>, source: &AuditSource) -> Vec<Value> {
    let base = base_event(facts, source);
    let Some((last, others)) = facts.patients.split_last() else {
        return vec![Value::Object(base)];
    };
    let mut events = Vec::with_capacity(facts.patients.len());
    for patient in others {
        events.push(patient_event(facts, base.clone(), patient));
    }
    // The common case, one patient, takes the base without copying it.
    events.push(patient_event(facts, base, last));
    events
}

/// `base` made the event of one `patient`.
fn patient_event(facts: &AccessFacts<'_>, mut event: Map<String, Value>, patient: &str) -> Value {
    // Break-the-glass is marked on the events of the patients whose blocks it lifted.
    let broken = facts
        .break_glass
        .filter(|(_, patients)| patients.iter().any(|p| p == patient))
        .map(|(reason, _)| reason);
    if broken.is_some()
        && let Some(Value::Array(purposes)) = event.get_mut("purposeOfEvent")
    {
        purposes.push(break_glass_purpose());
    } else if broken.is_some() {
        event.insert("purposeOfEvent".into(), json!([break_glass_purpose()]));
    }
    push_entity(&mut event, patient_entity(patient, broken));
    Value::Object(event)
}

fn break_glass_purpose() -> Value {
    json!({ "coding": [{ "system": ACT_REASON, "code": "BTG", "display": "break the glass" }] })
}

fn base_event(facts: &AccessFacts<'_>, source: &AuditSource) -> Map<String, Value> {
    let (subtype, action) = match facts.kind {
        AccessKind::Fhir(Some(request)) => (
            json!({ "system": "http://hl7.org/fhir/restful-interaction", "code": restful_code(request) }),
            action(request.interaction()),
        ),
        AccessKind::Fhir(None) => (
            json!({ "system": PORTVAGT_AUDIT, "code": "unclassified" }),
            method_action(facts.method),
        ),
        AccessKind::TokenExchange => (
            json!({ "system": PORTVAGT_AUDIT, "code": "token-exchange" }),
            "E",
        ),
    };
    let outcome = match facts.status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let outcome_description = match facts.reason {
        Some(reason) => format!("{} {reason}", facts.status),
        None => facts.status.to_string(),
    };
    let recorded = facts
        .recorded
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let mut event = Map::new();
    event.insert("resourceType".into(), "AuditEvent".into());
    event.insert(
        "type".into(),
        json!({
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation"
        }),
    );
    event.insert("subtype".into(), json!([subtype]));
    event.insert("action".into(), action.into());
    event.insert("recorded".into(), recorded.into());
    event.insert("outcome".into(), outcome.into());
    event.insert("outcomeDesc".into(), outcome_description.into());
    let purposes = purposes(facts);
    if !purposes.is_empty() {
        event.insert("purposeOfEvent".into(), Value::Array(purposes.clone()));
    }
    event.insert(
        "agent".into(),
        Value::Array(agents(facts, source, purposes)),
    );
    event.insert(
        "source".into(),
        json!({
            "site": source.site,
            "observer": { "display": source.observer },
            "type": [{
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server"
            }]
        }),
    );
    let mut entities = Vec::new();
    if let AccessKind::Fhir(Some(request)) = facts.kind {
        if let (Some(resource_type), Some(id)) = (request.resource_type(), request.id()) {
            entities.push(json!({
                "what": { "reference": format!("{}/{id}", resource_type.as_str()) },
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                "role": { "system": OBJECT_ROLE, "code": "4", "display": "Domain Resource" }
            }));
        }
        if matches!(action, "E") {
            let query = facts.target.split_once('?').map_or("", |(_, q)| q);
            entities.push(json!({
                "type": { "system": ENTITY_TYPE, "code": "2", "display": "System Object" },
                "role": { "system": OBJECT_ROLE, "code": "24", "display": "Query" },
                "query": base64::engine::general_purpose::STANDARD.encode(facts.target),
                "description": if query.is_empty() { facts.target.split('?').next().unwrap_or_default().to_owned() } else { facts.target.to_owned() }
            }));
        }
    }
    entities.push(json!({
        "what": { "identifier": { "value": facts.request_id } },
        "type": { "system": BALP_ENTITY_TYPE, "code": "XrequestId", "display": "Request Id" }
    }));
    event.insert("entity".into(), Value::Array(entities));
    event
}

fn push_entity(event: &mut Map<String, Value>, entity: Value) {
    if let Some(Value::Array(entities)) = event.get_mut("entity") {
        entities.insert(0, entity);
    }
}

fn patient_entity(patient: &str, break_glass: Option<&str>) -> Value {
    let mut entity = json!({
        "what": { "reference": format!("Patient/{patient}") },
        "type": { "system": ENTITY_TYPE, "code": "1", "display": "Person" },
        "role": { "system": OBJECT_ROLE, "code": "1", "display": "Patient" }
    });
    if let Some(reason) = break_glass {
        entity["detail"] = json!([{ "type": "break-glass-reason", "valueString": reason }]);
    }
    entity
}

/// The purposes of use, as v3-ActReason codes (a break-the-glass access adds `BTG` to the
/// events of the patients concerned).
fn purposes(facts: &AccessFacts<'_>) -> Vec<Value> {
    let mut codes = Vec::new();
    if let Some(purpose) = facts.principal.and_then(Principal::purpose_of_use) {
        let code = match purpose {
            "TREATMENT" => "TREAT",
            "EMERGENCY" => "ETREAT",
            "REQUEST" => "PATRQT",
            other => other,
        };
        codes.push(
            json!({ "coding": [{ "system": ACT_REASON, "code": code, "display": purpose }] }),
        );
    }
    codes
}

fn agents(facts: &AccessFacts<'_>, source: &AuditSource, purposes: Vec<Value>) -> Vec<Value> {
    let mut agents = Vec::new();
    let client_display = facts
        .principal
        .and_then(|p| p.identity().system_name.clone())
        .or_else(|| facts.peer.map(|peer| peer.subject().to_owned()))
        .unwrap_or_else(|| "unknown client".into());
    let mut client = json!({
        "type": { "coding": [{ "system": DCM, "code": "110153", "display": "Source Role ID" }] },
        "who": { "display": client_display },
        "requestor": facts.principal.is_none(),
    });
    if let Some(client_id) = facts.principal.and_then(Principal::client_id) {
        client["who"]["identifier"] = json!({ "value": client_id });
    }
    if let Some(ip) = facts.client_ip {
        client["network"] = json!({ "address": ip.to_string(), "type": "2" });
    }
    if let Some(peer) = facts.peer {
        client["altId"] = peer.subject().into();
    }
    agents.push(client);
    agents.push(json!({
        "type": { "coding": [{ "system": DCM, "code": "110152", "display": "Destination Role ID" }] },
        "who": { "display": source.observer },
        "requestor": false,
        "network": { "address": source.site, "type": "5" }
    }));
    let Some(principal) = facts.principal else {
        return agents;
    };
    let identity = principal.identity();
    let mut user = json!({
        "type": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
            "code": "humanuser",
            "display": "human user"
        }] },
        "who": {
            "identifier": { "system": principal.issuer(), "value": principal.subject() },
            "display": identity.name.clone().unwrap_or_else(|| principal.subject().to_owned())
        },
        "requestor": true,
    });
    if let Some(name) = &identity.name {
        user["name"] = name.clone().into();
    }
    if let Some(jti) = principal.jti() {
        user["policy"] = json!([format!("urn:ietf:params:oauth:jti:{jti}")]);
    }
    if !principal.roles().is_empty() {
        user["role"] = principal
            .roles()
            .iter()
            .map(|role| json!({ "coding": [{ "system": ROLE_SYSTEM, "code": role }] }))
            .collect();
    }
    if !purposes.is_empty() {
        user["purposeOfUse"] = Value::Array(purposes);
    }
    let mut other_ids = Vec::new();
    if let Some(cpr) = &identity.cpr {
        other_ids.push(
            json!({ "url": OTHER_ID, "valueIdentifier": { "system": CPR_SYSTEM, "value": cpr } }),
        );
    }
    if let Some(authorization) = &identity.authorization_id {
        other_ids.push(json!({ "url": OTHER_ID, "valueIdentifier": { "system": AUTHORIZATION_SYSTEM, "value": authorization } }));
    }
    if let Some(fhir_user) = principal.fhir_user() {
        user["who"]["reference"] = fhir_user.into();
    }
    if !other_ids.is_empty() {
        user["extension"] = Value::Array(other_ids);
    }
    agents.push(user);
    let organisation = identity
        .organisation
        .as_ref()
        .map(|org| (org.system(), org.id.clone(), org.name.clone()))
        .or_else(|| {
            facts
                .peer
                .and_then(|peer| peer.cvr())
                .map(|cvr| ("http://cvr.dk".to_owned(), cvr.to_owned(), None))
        });
    if let Some((system, id, name)) = organisation {
        let mut agent = json!({
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                "code": "PROV",
                "display": "healthcare provider"
            }] },
            "who": { "identifier": { "system": system, "value": id } },
            "requestor": false,
        });
        if let Some(name) = name {
            agent["who"]["display"] = name.into();
        }
        agents.push(agent);
    }
    if let Some(on_behalf_of) = &identity.on_behalf_of {
        agents.push(json!({
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "RESP",
                "display": "responsible party"
            }] },
            "who": { "identifier": { "value": on_behalf_of } },
            "requestor": false,
        }));
    }
    agents
}

/// The `restful-interaction` code (R4 value set) of a request.
fn restful_code(request: &FhirRequest) -> &'static str {
    match request.interaction() {
        Interaction::SearchCompartment => "search-type",
        Interaction::ConditionalUpdate => "update",
        Interaction::ConditionalPatch => "patch",
        Interaction::ConditionalDelete => "delete",
        Interaction::BatchOrTransaction => match request.body() {
            Some(RequestBody::Bundle {
                kind: BundleKind::Transaction,
                ..
            }) => "transaction",
            _ => "batch",
        },
        other => other.as_str(),
    }
}

/// BALP's action: C create, R read, U update, D delete, E execute (queries, operations,
/// batches).
fn action(interaction: Interaction) -> &'static str {
    match interaction {
        Interaction::Create => "C",
        Interaction::Read
        | Interaction::Vread
        | Interaction::Capabilities
        | Interaction::HistoryInstance => "R",
        Interaction::Update
        | Interaction::Patch
        | Interaction::ConditionalUpdate
        | Interaction::ConditionalPatch => "U",
        Interaction::Delete | Interaction::ConditionalDelete => "D",
        _ => "E",
    }
}

fn method_action(method: &str) -> &'static str {
    match method {
        "GET" | "HEAD" => "R",
        "POST" => "C",
        "PUT" | "PATCH" => "U",
        "DELETE" => "D",
        _ => "E",
    }
}
