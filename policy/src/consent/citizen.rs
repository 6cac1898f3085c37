//! A citizen's own blocks ("spær for denne sundhedsperson"): what a citizen may ask for on the
//! citizen listener, and the one Consent the gateway writes for it.
//!
//! She asks with a Consent of one shape: active, about herself, one `deny` provision naming one
//! professional or organisation, an optional period, and an extension naming the AuditEvent of
//! her own log the actor was taken from. The gateway does not store what she sent: it checks
//! that the actor is one the event names ([`actors_in_event`]: the user who accessed her data,
//! or the organisation they acted for) and writes a Consent it builds itself ([`build`]), tagged
//! as hers to lift ([`is_citizen_block`]). Lifting is one JSON Patch only: `replace /status`
//! with `inactive` ([`read_withdrawal`]); nothing else about a Consent is hers to change here.

use serde_json::{Map, Value, json};

use super::{AUTHORIZATION_SYSTEM, Actor, CallerIds, SOR_SYSTEM, instant, relative};
use crate::resource_type::is_valid_id;

/// The tag of a Consent a citizen made here (and may lift here).
pub const BLOCK_TAG_SYSTEM: &str = "urn:portvagt:consent";
/// See [`BLOCK_TAG_SYSTEM`].
pub const BLOCK_TAG_CODE: &str = "citizen-block";
/// The extension naming the AuditEvent a block's actor was taken from.
pub const SOURCE_EXTENSION: &str = "urn:portvagt:consent:blocked-from";
/// The most active blocks one citizen keeps here.
pub const MAX_ACTIVE_BLOCKS: usize = 10;

const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// Why a citizen's block or withdrawal is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRefusal {
    /// Not of the one shape a citizen may write (422).
    Shape(&'static str),
    /// Of the shape, but not hers to make (403): another patient, an event not in her log, an
    /// actor the event does not name, a Consent she did not make here.
    Refused(&'static str),
}

/// Whom a block names: a person or an organisation, as an audit record names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedActor {
    /// How the Consent names them.
    pub actor: Actor,
    /// The name the event gives them (shown to her), if any.
    pub display: Option<String>,
}

/// What a citizen asked to block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRequest {
    /// The actor as she wrote it (matched against the event's).
    pub actor: Actor,
    /// The AuditEvent's id.
    pub event: String,
    /// `period.start` and `period.end` as she wrote them (each a FHIR dateTime), if given.
    pub period: Option<(Option<String>, Option<String>)>,
}

/// Reads a block request for `patient` (her id) at `now` (Unix seconds): only the one shape.
pub fn read_request(body: &Value, patient: &str, now: i64) -> Result<BlockRequest, BlockRefusal> {
    use BlockRefusal::{Refused, Shape};
    let object = only_keys(
        body,
        &[
            "resourceType",
            "status",
            "patient",
            "provision",
            "extension",
        ],
    )
    .ok_or(Shape(
        "a block holds resourceType, status, patient, provision and extension only",
    ))?;
    if object.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return Err(Shape("a block is a Consent"));
    }
    if object.get("status").and_then(Value::as_str) != Some("active") {
        return Err(Shape("a block is made active"));
    }
    let patient_reference = object
        .get("patient")
        .and_then(|p| only_keys(p, &["reference"]))
        .and_then(|p| p.get("reference"))
        .and_then(Value::as_str)
        .ok_or(Shape("patient is a reference to her Patient"))?;
    if patient_reference != format!("Patient/{patient}") {
        return Err(Refused("a citizen blocks access to her own record only"));
    }
    let provision = object
        .get("provision")
        .and_then(|p| only_keys(p, &["type", "actor", "period"]))
        .ok_or(Shape("provision holds type, actor and period only"))?;
    if provision.get("type").and_then(Value::as_str) != Some("deny") {
        return Err(Shape("a block's provision is a deny"));
    }
    let actor = match provision.get("actor").and_then(Value::as_array) {
        Some(actors) if actors.len() == 1 => read_actor(&actors[0])?,
        _ => return Err(Shape("a block names exactly one actor")),
    };
    let period = match provision.get("period") {
        None => None,
        Some(period) => Some(read_period(period, now)?),
    };
    let event = match object.get("extension").and_then(Value::as_array) {
        Some(extensions) if extensions.len() == 1 => read_source(&extensions[0])?,
        _ => return Err(Shape("a block names the AuditEvent it was taken from")),
    };
    Ok(BlockRequest {
        actor,
        event,
        period,
    })
}

/// The object's fields, if it is an object holding no other keys than `allowed`.
fn only_keys<'a>(value: &'a Value, allowed: &[&str]) -> Option<&'a Map<String, Value>> {
    let object = value.as_object()?;
    object
        .keys()
        .all(|key| allowed.contains(&key.as_str()))
        .then_some(object)
}

fn read_actor(value: &Value) -> Result<Actor, BlockRefusal> {
    use BlockRefusal::Shape;
    let actor = only_keys(value, &["role", "reference"])
        .ok_or(Shape("an actor holds role and reference only"))?;
    if let Some(role) = actor.get("role") {
        let codings = role.get("coding").and_then(Value::as_array);
        let prcp = codings.is_some_and(|codings| {
            codings.len() == 1
                && codings[0].get("system").and_then(Value::as_str) == Some(PARTICIPATION)
                && codings[0].get("code").and_then(Value::as_str) == Some("PRCP")
        });
        if !prcp || only_keys(role, &["coding"]).is_none() {
            return Err(Shape("an actor's role, if given, is PRCP"));
        }
    }
    let reference = actor
        .get("reference")
        .and_then(|r| only_keys(r, &["reference", "identifier", "display"]))
        .ok_or(Shape("an actor is a reference or an identifier"))?;
    match (reference.get("reference"), reference.get("identifier")) {
        (Some(literal), None) => {
            let literal = literal.as_str().unwrap_or_default();
            let (kind, id) = literal.split_once('/').unwrap_or_default();
            if !["Practitioner", "PractitionerRole", "Organization"].contains(&kind)
                || !is_valid_id(id)
            {
                return Err(Shape(
                    "an actor is a Practitioner, PractitionerRole or Organization, as Type/id",
                ));
            }
            Ok(Actor::Reference(literal.to_owned()))
        }
        (None, Some(identifier)) => {
            let identifier = only_keys(identifier, &["system", "value"])
                .ok_or(Shape("an identifier holds system and value only"))?;
            let system = identifier.get("system").and_then(Value::as_str);
            let value = identifier.get("value").and_then(Value::as_str);
            match (system, value) {
                (Some(system), Some(value))
                    if [AUTHORIZATION_SYSTEM, SOR_SYSTEM].contains(&system)
                        && plain_value(value) =>
                {
                    Ok(Actor::Identifier(system.to_owned(), value.to_owned()))
                }
                _ => Err(Shape(
                    "an actor's identifier is an authorisation id or a SOR code",
                )),
            }
        }
        _ => Err(Shape("an actor is a reference or an identifier")),
    }
}

/// A register value as registers write them: letters, digits and `-`, at most 64.
fn plain_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn read_period(value: &Value, now: i64) -> Result<(Option<String>, Option<String>), BlockRefusal> {
    use BlockRefusal::Shape;
    let period =
        only_keys(value, &["start", "end"]).ok_or(Shape("a period holds start and end only"))?;
    let side = |key: &str, end: bool| -> Result<Option<(String, i64)>, BlockRefusal> {
        match period.get(key) {
            None => Ok(None),
            Some(item) => {
                let text = item
                    .as_str()
                    .ok_or(Shape("a period's ends are dateTimes"))?;
                let at = instant(text, end).ok_or(Shape("a period's ends are dateTimes"))?;
                Ok(Some((text.to_owned(), at)))
            }
        }
    };
    let (start, end) = (side("start", false)?, side("end", true)?);
    if let Some((_, end)) = &end {
        if *end <= now {
            return Err(Shape("a block's period ends in the future"));
        }
        if start.as_ref().is_some_and(|(_, start)| start >= end) {
            return Err(Shape("a block's period starts before it ends"));
        }
    }
    if start.is_none() && end.is_none() {
        return Err(Shape("a period has a start or an end"));
    }
    Ok((start.map(|(text, _)| text), end.map(|(text, _)| text)))
}

fn read_source(value: &Value) -> Result<String, BlockRefusal> {
    use BlockRefusal::Shape;
    let extension = only_keys(value, &["url", "valueReference"])
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(SOURCE_EXTENSION))
        .ok_or(Shape(
            "the extension names the AuditEvent the block was taken from",
        ))?;
    let reference = extension
        .get("valueReference")
        .and_then(|r| only_keys(r, &["reference"]))
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .ok_or(Shape(
            "the extension names the AuditEvent the block was taken from",
        ))?;
    reference
        .strip_prefix("AuditEvent/")
        .filter(|id| is_valid_id(id))
        .map(str::to_owned)
        .ok_or(Shape("the extension names an AuditEvent, as AuditEvent/id"))
}

/// Whom an AuditEvent lets her block: the user who acted (by the Practitioner or
/// PractitionerRole of their `fhirUser`, when it is a reference into this FHIR server, not an
/// absolute URL into another; and by their authorisation id) and the health care unit they
/// acted for (by SOR code). Never a Patient (herself, or a guardian), the client system, the
/// gateway, or an organisation by CVR number: that is what the client certificate names, and a
/// region's one certificate would shut out everyone who uses its system.
pub fn actors_in_event(event: &Value) -> Vec<BlockedActor> {
    let mut found = Vec::new();
    for agent in event
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let codes: Vec<&str> = agent
            .pointer("/type/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|coding| coding.get("code").and_then(Value::as_str))
            .collect();
        if codes.contains(&"humanuser") {
            let display = agent.get("name").and_then(Value::as_str).map(str::to_owned);
            if let Some(reference) = agent
                .pointer("/who/reference")
                .and_then(Value::as_str)
                .filter(|reference| !reference.contains("://"))
            {
                let relative = relative(reference);
                let (kind, id) = relative.split_once('/').unwrap_or_default();
                if ["Practitioner", "PractitionerRole"].contains(&kind) && is_valid_id(id) {
                    found.push(BlockedActor {
                        actor: Actor::Reference(relative.to_owned()),
                        display: display.clone(),
                    });
                }
            }
            for other in agent
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let identifier = other.get("valueIdentifier");
                let system = identifier
                    .and_then(|i| i.get("system"))
                    .and_then(Value::as_str);
                let value = identifier
                    .and_then(|i| i.get("value"))
                    .and_then(Value::as_str);
                if let (Some(AUTHORIZATION_SYSTEM), Some(value)) = (system, value)
                    && plain_value(value)
                {
                    found.push(BlockedActor {
                        actor: Actor::Identifier(AUTHORIZATION_SYSTEM.into(), value.into()),
                        display: display.clone(),
                    });
                }
            }
        } else if codes.contains(&"PROV") {
            let system = agent
                .pointer("/who/identifier/system")
                .and_then(Value::as_str);
            let value = agent
                .pointer("/who/identifier/value")
                .and_then(Value::as_str);
            if let (Some(SOR_SYSTEM), Some(value)) = (system, value)
                && plain_value(value)
            {
                found.push(BlockedActor {
                    actor: Actor::Identifier(SOR_SYSTEM.into(), value.into()),
                    display: agent
                        .pointer("/who/display")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
            }
        }
    }
    found
}

/// The event's actor `asked` names (as consent matches callers: identifiers as registers write
/// them, references by `Type/id`), in the event's own spelling.
pub fn matching_actor(event_actors: &[BlockedActor], asked: &Actor) -> Option<BlockedActor> {
    event_actors
        .iter()
        .find(|candidate| {
            let ids = match &candidate.actor {
                Actor::Identifier(system, value) => CallerIds {
                    identifiers: vec![(system.clone(), value.clone())],
                    references: Vec::new(),
                },
                Actor::Reference(reference) => CallerIds {
                    identifiers: Vec::new(),
                    references: vec![reference.clone()],
                },
            };
            ids.is(asked)
        })
        .cloned()
}

/// The Consent the gateway writes for `patient`'s block of `actor` (as the event names them),
/// as she asked in `request`, made at `now` (an RFC 3339 instant).
pub fn build(patient: &str, actor: &BlockedActor, request: &BlockRequest, now: &str) -> Value {
    let mut reference = Map::new();
    match &actor.actor {
        Actor::Reference(literal) => {
            reference.insert("reference".into(), Value::String(literal.clone()));
        }
        Actor::Identifier(system, value) => {
            reference.insert(
                "identifier".into(),
                json!({ "system": system, "value": value }),
            );
        }
    }
    if let Some(display) = &actor.display {
        reference.insert("display".into(), Value::String(display.clone()));
    }
    let mut provision = json!({
        "type": "deny",
        "actor": [{
            "role": { "coding": [{ "system": PARTICIPATION, "code": "PRCP" }] },
            "reference": reference
        }]
    });
    if let Some((start, end)) = &request.period {
        let mut period = Map::new();
        if let Some(start) = start {
            period.insert("start".into(), Value::String(start.clone()));
        }
        if let Some(end) = end {
            period.insert("end".into(), Value::String(end.clone()));
        }
        provision["period"] = Value::Object(period);
    }
    json!({
        "resourceType": "Consent",
        "meta": { "tag": [{ "system": BLOCK_TAG_SYSTEM, "code": BLOCK_TAG_CODE }] },
        "extension": [{
            "url": SOURCE_EXTENSION,
            "valueReference": { "reference": format!("AuditEvent/{}", request.event) }
        }],
        "status": "active",
        "scope": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy"
        }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": format!("Patient/{patient}") },
        "dateTime": now,
        "policyRule": { "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "OPTIN"
        }] },
        "provision": provision
    })
}

/// A block `patient` made here, read back: exactly what [`build`] writes (the server's own `id`,
/// `meta` and narrative aside), or `None`. A Consent merely tagged so (a professional can write one) is
/// not hers: not the block she has, not counted, not hers to lift.
pub fn read_block(consent: &Value, patient: &str) -> Option<MadeBlock> {
    if !is_citizen_block(consent, patient) {
        return None;
    }
    let actor = blocked_actor(consent)?;
    let event = consent
        .pointer("/extension/0/valueReference/reference")?
        .as_str()?
        .strip_prefix("AuditEvent/")?
        .to_owned();
    let side =
        |period: &Value, key: &str| period.get(key).and_then(Value::as_str).map(str::to_owned);
    let period = consent
        .pointer("/provision/period")
        .map(|period| (side(period, "start"), side(period, "end")));
    let made = consent.get("dateTime")?.as_str()?;
    let request = BlockRequest {
        actor: actor.clone(),
        event,
        period,
    };
    let blocked = BlockedActor {
        actor,
        display: blocked_display(consent).map(str::to_owned),
    };
    let mut again = build(patient, &blocked, &request, made);
    let mut stored = consent.clone();
    let object = stored.as_object_mut()?;
    let status = object.remove("status")?;
    // What a server adds of its own: its id, its meta, a narrative.
    object.remove("id");
    object.remove("meta");
    object.remove("text");
    again.as_object_mut()?.remove("status");
    again.as_object_mut()?.remove("meta");
    (stored == again).then(|| MadeBlock {
        actor: request.actor,
        period: request.period,
        active: status == "active",
    })
}

/// A block as [`read_block`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeBlock {
    /// Whom it names.
    pub actor: Actor,
    /// Its period, as written.
    pub period: Option<(Option<String>, Option<String>)>,
    /// `status` is `active` (else it was lifted).
    pub active: bool,
}

impl MadeBlock {
    /// Whether it still holds at `now` or later: active, and its period not over.
    pub fn in_force(&self, now: i64) -> bool {
        let over = self
            .period
            .as_ref()
            .and_then(|(_, end)| end.as_deref())
            .and_then(|end| instant(end, true))
            .is_some_and(|end| end <= now);
        self.active && !over
    }
}

/// Whether `consent` carries the tag of a citizen's block (whosever, whatever it says).
pub fn carries_block_tag(consent: &Value) -> bool {
    consent
        .pointer("/meta/tag")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|tag| {
            tag.get("system").and_then(Value::as_str) == Some(BLOCK_TAG_SYSTEM)
                && tag.get("code").and_then(Value::as_str) == Some(BLOCK_TAG_CODE)
        })
}

/// Whether `consent` is tagged as a block `patient` made here, and about her (what it says is
/// read by [`read_block`]).
pub(crate) fn is_citizen_block(consent: &Value, patient: &str) -> bool {
    carries_block_tag(consent)
        && consent.get("resourceType").and_then(Value::as_str) == Some("Consent")
        && consent
            .pointer("/patient/reference")
            .and_then(Value::as_str)
            == Some(format!("Patient/{patient}").as_str())
}

/// The actor a block names, as [`build`] wrote it.
fn blocked_actor(consent: &Value) -> Option<Actor> {
    let reference = consent.pointer("/provision/actor/0/reference")?;
    if let Some(literal) = reference.get("reference").and_then(Value::as_str) {
        return Some(Actor::Reference(literal.to_owned()));
    }
    Some(Actor::Identifier(
        reference
            .pointer("/identifier/system")?
            .as_str()?
            .to_owned(),
        reference.pointer("/identifier/value")?.as_str()?.to_owned(),
    ))
}

/// The name a block shows for whom it names.
pub fn blocked_display(consent: &Value) -> Option<&str> {
    consent
        .pointer("/provision/actor/0/reference/display")
        .and_then(Value::as_str)
}

/// Reads a withdrawal: a JSON Patch of exactly one operation, `replace` `/status` with
/// `inactive`.
pub fn read_withdrawal(patch: &Value) -> Result<(), BlockRefusal> {
    let only = patch
        .as_array()
        .filter(|ops| ops.len() == 1)
        .and_then(|ops| only_keys(&ops[0], &["op", "path", "value"]));
    let is_withdrawal = only.is_some_and(|op| {
        op.get("op").and_then(Value::as_str) == Some("replace")
            && op.get("path").and_then(Value::as_str) == Some("/status")
            && op.get("value").and_then(Value::as_str) == Some("inactive")
    });
    if is_withdrawal {
        Ok(())
    } else {
        Err(BlockRefusal::Shape(
            "a block is lifted by one JSON Patch operation: replace /status with inactive",
        ))
    }
}

#[cfg(test)]
mod tests;
