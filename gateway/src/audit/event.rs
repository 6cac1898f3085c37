//! FHIR R4 `AuditEvent`s in the shape of IHE BALP (Basic Audit Log Patterns) for RESTful
//! access: `type` rest, `subtype` the interaction, `action` C/R/U/D/E, the user (requestor) with
//! their identifiers, role and purpose, their organisation, the client system, this gateway,
//! and the entities: the patient, the resource, the raw query, the request id.
//!
//! A search whose answer is about several patients becomes one event per patient (BALP
//! PatientQuery), so every citizen's log is complete on its own.
//! <https://profiles.ihe.net/ITI/BALP/>

use std::borrow::Cow;
use std::net::IpAddr;

use base64::Engine as _;
use portvagt_policy::request::{BundleKind, RequestBody};
use portvagt_policy::{FhirRequest, Interaction};
use serde::Serialize;
use serde::ser::SerializeSeq as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::Principal;
use crate::encoding::form_encode;
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
                .map(|reason| {
                    vec![Detail {
                        r#type: "break-glass-reason",
                        value_string: reason,
                    }]
                })
                .unwrap_or_default(),
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

fn base_event<'a>(facts: &'a AccessFacts<'a>, source: &'a AuditSource) -> Event<'a> {
    let (subtype, action) = match facts.kind {
        AccessKind::Fhir(Some(request)) => (
            Coding::new(
                "http://hl7.org/fhir/restful-interaction",
                restful_code(request),
                None,
            ),
            action(request.interaction()),
        ),
        AccessKind::Fhir(None) => (
            Coding::new(PORTVAGT_AUDIT, "unclassified", None),
            method_action(facts.method),
        ),
        AccessKind::TokenExchange => (Coding::new(PORTVAGT_AUDIT, "token-exchange", None), "E"),
    };
    let outcome = match facts.status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let outcome_desc = match facts.reason {
        Some(reason) => format!("{} {reason}", facts.status),
        None => facts.status.to_string(),
    };
    let recorded = facts
        .recorded
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let purposes = purposes(facts);
    let mut entity = Vec::new();
    if let AccessKind::Fhir(Some(request)) = facts.kind {
        if let (Some(resource_type), Some(id)) = (request.resource_type(), request.id()) {
            entity.push(Entity {
                what: Some(What::reference(format!("{}/{id}", resource_type.as_str()))),
                role: Some(Coding::new(OBJECT_ROLE, "4", Some("Domain Resource"))),
                ..Entity::default()
            });
        }
        if matches!(action, "E") {
            // A `POST _search` carries its criteria in the body: they are the query too.
            let target: Text<'a> = if facts.target.contains('?') || request.params().is_empty() {
                Cow::Borrowed(facts.target)
            } else {
                let criteria: Vec<String> = request
                    .params()
                    .iter()
                    .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
                    .collect();
                let path = facts.target.trim_end_matches("/_search");
                Cow::Owned(format!("{path}?{}", criteria.join("&")))
            };
            let described = if target.contains('?') {
                target.clone()
            } else {
                Cow::Borrowed(facts.target)
            };
            entity.push(Entity {
                role: Some(Coding::new(OBJECT_ROLE, "24", Some("Query"))),
                query: Some(base64::engine::general_purpose::STANDARD.encode(target.as_bytes())),
                description: Some(described),
                ..Entity::default()
            });
        }
    }
    entity.push(Entity {
        what: Some(What {
            reference: None,
            identifier: Some(Identifier {
                system: None,
                value: facts.request_id.into(),
            }),
        }),
        r#type: Coding::new(BALP_ENTITY_TYPE, "XrequestId", Some("Request Id")),
        ..Entity::default()
    });
    Event {
        resource_type: "AuditEvent",
        r#type: Coding::new(
            "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "rest",
            Some("Restful Operation"),
        ),
        subtype: [subtype],
        action,
        recorded,
        outcome,
        outcome_desc,
        agent: agents(facts, source, &purposes),
        purpose_of_event: purposes,
        source: Source {
            site: &source.site,
            observer: Display {
                display: &source.observer,
            },
            r#type: [Coding::new(
                "http://terminology.hl7.org/CodeSystem/security-source-type",
                "4",
                Some("Application Server"),
            )],
        },
        entity: Entities {
            patient: None,
            others: entity,
        },
    }
}

/// The purposes of use, as v3-ActReason codes (a break-the-glass access adds `BTG` to the
/// events of the patients concerned).
fn purposes<'a>(facts: &AccessFacts<'a>) -> Vec<Concept<'a>> {
    let mut codes = Vec::new();
    if let Some(purpose) = facts.principal.and_then(Principal::purpose_of_use) {
        let code = match purpose {
            "TREATMENT" => "TREAT",
            "EMERGENCY" => "ETREAT",
            "REQUEST" => "PATRQT",
            other => other,
        };
        codes.push(Concept::one(Coding::new(ACT_REASON, code, Some(purpose))));
    }
    codes
}

fn agents<'a>(
    facts: &'a AccessFacts<'a>,
    source: &'a AuditSource,
    purposes: &[Concept<'a>],
) -> Vec<Agent<'a>> {
    let mut agents = Vec::new();
    let client_display: Text<'a> = facts
        .principal
        .and_then(|p| p.identity().system_name.as_deref())
        .or_else(|| facts.peer.map(PeerIdentity::subject))
        .unwrap_or("unknown client")
        .into();
    let mut client = Agent::new(
        Coding::new(DCM, "110153", Some("Source Role ID")),
        Who {
            identifier: facts
                .principal
                .and_then(Principal::client_id)
                .map(|client_id| Identifier {
                    system: None,
                    value: client_id.into(),
                }),
            reference: None,
            display: Some(client_display),
        },
        facts.principal.is_none(),
    );
    client.network = facts.client_ip.map(|ip| Network {
        address: ip.to_string().into(),
        r#type: "2",
    });
    client.alt_id = facts.peer.map(PeerIdentity::subject);
    agents.push(client);
    let mut gateway = Agent::new(
        Coding::new(DCM, "110152", Some("Destination Role ID")),
        Who {
            display: Some(source.observer.as_str().into()),
            ..Who::default()
        },
        false,
    );
    gateway.network = Some(Network {
        address: source.site.as_str().into(),
        r#type: "5",
    });
    agents.push(gateway);
    let Some(principal) = facts.principal else {
        return agents;
    };
    let identity = principal.identity();
    let mut user = Agent::new(
        Coding::new(
            "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
            "humanuser",
            Some("human user"),
        ),
        Who {
            identifier: Some(Identifier {
                system: Some(principal.issuer().into()),
                value: principal.subject().into(),
            }),
            reference: principal.fhir_user().map(Into::into),
            display: Some(
                identity
                    .name
                    .as_deref()
                    .unwrap_or(principal.subject())
                    .into(),
            ),
        },
        true,
    );
    user.name = identity.name.as_deref();
    user.policy = principal
        .jti()
        .map(|jti| vec![format!("urn:ietf:params:oauth:jti:{jti}")])
        .unwrap_or_default();
    user.role = principal
        .roles()
        .iter()
        .map(|role| Concept::one(Coding::new(ROLE_SYSTEM, role.as_str(), None)))
        .collect();
    user.purpose_of_use = purposes.to_vec();
    if let Some(cpr) = &identity.cpr {
        user.extension.push(OtherId {
            url: OTHER_ID,
            value_identifier: Identifier {
                system: Some(CPR_SYSTEM.into()),
                value: cpr.as_str().into(),
            },
        });
    }
    if let Some(authorization) = &identity.authorization_id {
        user.extension.push(OtherId {
            url: OTHER_ID,
            value_identifier: Identifier {
                system: Some(AUTHORIZATION_SYSTEM.into()),
                value: authorization.as_str().into(),
            },
        });
    }
    agents.push(user);
    let organisation = identity
        .organisation
        .as_ref()
        .map(|org| {
            (
                Text::from(org.system()),
                org.id.as_str(),
                org.name.as_deref(),
            )
        })
        .or_else(|| {
            // The certificate's organisation: its CVR, and its name (`O=`) for the citizen.
            let peer = facts.peer?;
            peer.cvr()
                .map(|cvr| (Text::from("http://cvr.dk"), cvr, peer.organisation_name()))
        });
    if let Some((system, id, name)) = organisation {
        agents.push(Agent::new(
            Coding::new(
                "http://terminology.hl7.org/CodeSystem/v3-RoleClass",
                "PROV",
                Some("healthcare provider"),
            ),
            Who {
                identifier: Some(Identifier {
                    system: Some(system),
                    value: id.into(),
                }),
                reference: None,
                display: name.map(Into::into),
            },
            false,
        ));
    }
    if let Some(on_behalf_of) = &identity.on_behalf_of {
        agents.push(Agent::new(
            Coding::new(
                "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "RESP",
                Some("responsible party"),
            ),
            Who {
                identifier: Some(Identifier {
                    system: None,
                    value: on_behalf_of.as_str().into(),
                }),
                ..Who::default()
            },
            false,
        ));
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
