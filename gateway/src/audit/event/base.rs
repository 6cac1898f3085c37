//! What all the AuditEvents of one access share: the interaction's subtype and BALP action, the
//! outcome, the purpose of use, the source, the resource, query and request-id entities, and the
//! agents ([`super::agents`]). It adds no patient: the per-patient entity and break-the-glass
//! mark are [`super::audit_events`]'s.

use std::borrow::Cow;

use base64::Engine as _;
use portvagt_policy::request::{BundleKind, RequestBody};
use portvagt_policy::{FhirRequest, Interaction};
use time::format_description::well_known::Rfc3339;

use super::agents::agents;
use super::{
    ACT_REASON, AccessFacts, AccessKind, AuditSource, Coding, Concept, Detail, Display, Entities,
    Entity, Event, Identifier, OBJECT_ROLE, PORTVAGT_AUDIT, Source, Text, What,
};
use crate::auth::Principal;
use crate::encoding::form_encode;

const BALP_ENTITY_TYPE: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";

pub(super) fn base_event<'a>(facts: &'a AccessFacts<'a>, source: &'a AuditSource) -> Event<'a> {
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
    if let Some(block) = facts.citizen_block {
        // Her block: the Consent, what changed, and whom it blocks, by name (her log says
        // "Du spærrede for …").
        entity.push(Entity {
            what: Some(What::reference(format!("Consent/{}", block.consent))),
            role: Some(Coding::new(OBJECT_ROLE, "4", Some("Domain Resource"))),
            detail: std::iter::once(Detail {
                r#type: "citizen-block",
                value_string: block.change,
            })
            .chain(block.display.as_deref().map(|display| Detail {
                r#type: "blocked",
                value_string: display,
            }))
            .collect(),
            ..Entity::default()
        });
    }
    if let AccessKind::Fhir(Some(request)) = facts.kind {
        if let (Some(resource_type), Some(id), None) =
            (request.resource_type(), request.id(), facts.citizen_block)
        {
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
    // The W3C trace the request was part of, to find its spans (BALP has no code for it).
    if let Some(trace_id) = facts.trace_id {
        entity.push(Entity {
            what: Some(What {
                reference: None,
                identifier: Some(Identifier {
                    system: Some("https://www.w3.org/TR/trace-context/#trace-id".into()),
                    value: trace_id.into(),
                }),
            }),
            r#type: Coding::new(PORTVAGT_AUDIT, "trace-id", Some("W3C trace id")),
            ..Entity::default()
        });
    }
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
