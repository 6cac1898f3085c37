//! The citizen's view of their access log (the Danish MinLog idea): who (name, profession,
//! organisation, and whom a secretary acted for), when, what kind of access to which data, for
//! what purpose, and a clear mark with the reason on break-the-glass accesses. Nothing about
//! other people beyond that, and none of the gateway's internals (addresses, certificate
//! subjects, token ids, raw queries, request ids, the user's CPR).

use serde_json::{Map, Value, json};

/// Rewrites an AuditEvent, or every AuditEvent in a Bundle, into the citizen's view.
pub fn citizen_view(answer: &mut Value) {
    match answer.get("resourceType").and_then(Value::as_str) {
        Some("AuditEvent") => *answer = view(answer),
        Some("Bundle") => {
            if let Some(entries) = answer.get_mut("entry").and_then(Value::as_array_mut) {
                for entry in entries {
                    if let Some(resource) = entry.get_mut("resource")
                        && resource.get("resourceType").and_then(Value::as_str)
                            == Some("AuditEvent")
                    {
                        *resource = view(resource);
                    }
                }
            }
        }
        _ => {}
    }
}

fn view(event: &Value) -> Value {
    let mut out = Map::new();
    for field in [
        "resourceType",
        "id",
        "type",
        "subtype",
        "action",
        "recorded",
        "outcome",
        "purposeOfEvent",
    ] {
        if let Some(value) = event.get(field) {
            out.insert(field.into(), value.clone());
        }
    }
    let agents: Vec<Value> = event
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(agent_view)
        .collect();
    out.insert("agent".into(), Value::Array(agents));
    // R4 requires a source; the citizen learns only that the gateway recorded it.
    out.insert(
        "source".into(),
        json!({ "observer": { "display": "Portvagt" } }),
    );
    let entities: Vec<Value> = event
        .get("entity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|entity| entity.pointer("/what/reference").is_some())
        .map(|entity| {
            let mut kept = Map::new();
            for field in ["what", "type", "role", "detail"] {
                if let Some(value) = entity.get(field) {
                    kept.insert(field.into(), value.clone());
                }
            }
            Value::Object(kept)
        })
        .collect();
    if !entities.is_empty() {
        out.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(out)
}

/// The agents a citizen sees: the person (name, role, purpose), their organisation, whom they
/// acted for, and the system used (by name); never the gateway itself.
fn agent_view(agent: &Value) -> Option<Value> {
    let code = agent.pointer("/type/coding/0/code")?.as_str()?;
    let mut kept = Map::new();
    kept.insert("type".into(), agent.get("type")?.clone());
    kept.insert(
        "requestor".into(),
        agent
            .get("requestor")
            .cloned()
            .unwrap_or(Value::Bool(false)),
    );
    let display = agent.pointer("/who/display").cloned();
    match code {
        "humanuser" => {
            // The name only: without one, `who.display` holds the token subject, which can be
            // a CPR number.
            let mut who = Map::new();
            if let Some(name) = agent.get("name") {
                who.insert("display".into(), name.clone());
            }
            if let Some(reference) = agent.pointer("/who/reference") {
                who.insert("reference".into(), reference.clone());
            }
            kept.insert("who".into(), Value::Object(who));
            for field in ["name", "role", "purposeOfUse"] {
                if let Some(value) = agent.get(field) {
                    kept.insert(field.into(), value.clone());
                }
            }
            // Her authorisation id (public, in the register of health professionals), so the
            // citizen can block her by it; never her CPR number.
            let authorisation: Vec<Value> = agent
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|other| {
                    let system = other.pointer("/valueIdentifier/system")?.as_str()?;
                    let value = other.pointer("/valueIdentifier/value")?.as_str()?;
                    (system == portvagt_policy::consent::AUTHORIZATION_SYSTEM).then(|| {
                        json!({
                            "url": other.get("url").cloned().unwrap_or(Value::Null),
                            "valueIdentifier": { "system": system, "value": value }
                        })
                    })
                })
                .collect();
            if !authorisation.is_empty() {
                kept.insert("extension".into(), Value::Array(authorisation));
            }
        }
        // The organisation and whom a secretary acted for, as identified.
        "PROV" | "RESP" => {
            kept.insert("who".into(), agent.get("who")?.clone());
        }
        // The calling system, by name only (a certificate's common name, not its subject).
        "110153" => {
            let name = display
                .as_ref()
                .and_then(Value::as_str)
                .and_then(common_name)?;
            kept.insert("who".into(), json!({ "display": name }));
        }
        _ => return None,
    }
    Some(Value::Object(kept))
}

/// `CN` of an RFC 4514 subject, or the text itself when it is a plain name; nothing for a
/// subject without a common name (its other parts are identifiers).
fn common_name(display: &str) -> Option<String> {
    if let Some(name) = display
        .split(", ")
        .find_map(|part| part.strip_prefix("CN="))
    {
        return Some(name.to_owned());
    }
    (!display.contains('=')).then(|| display.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_citizen_sees_who_when_what_and_why_and_nothing_internal() {
        let mut event = json!({
            "resourceType": "AuditEvent", "id": "a1",
            "type": { "code": "rest" }, "subtype": [{ "code": "read" }], "action": "R",
            "recorded": "2026-11-30T07:00:00Z", "outcome": "0", "outcomeDesc": "200",
            "purposeOfEvent": [{ "coding": [{ "code": "BTG" }] }],
            "agent": [
                { "type": { "coding": [{ "code": "110153" }] }, "who": { "display": "Journalsystem", "identifier": { "value": "client-1" } },
                  "altId": "CN=secret subject", "network": { "address": "10.0.0.1", "type": "2" }, "requestor": false },
                { "type": { "coding": [{ "code": "110152" }] }, "who": { "display": "portvagt@node-7" }, "requestor": false },
                { "type": { "coding": [{ "code": "humanuser" }] }, "who": { "display": "Mette Kjær", "identifier": { "system": "https://issuer", "value": "sub-1" } },
                  "name": "Mette Kjær", "policy": ["urn:ietf:params:oauth:jti:abc"], "role": [{ "coding": [{ "code": "7170" }] }],
                  "extension": [
                      { "url": "x", "valueIdentifier": { "system": "urn:oid:1.2.208.176.1.2", "value": "0501792275" } },
                      { "url": "x", "valueIdentifier": { "system": "https://autregweb.sst.dk", "value": "NS363" } }
                  ], "requestor": true },
                { "type": { "coding": [{ "code": "PROV" }] }, "who": { "identifier": { "system": "http://cvr.dk", "value": "12345678" }, "display": "Region" }, "requestor": false }
            ],
            "source": { "site": "https://internal:8443/fhir", "observer": { "display": "portvagt@node-7" } },
            "entity": [
                { "what": { "reference": "Patient/pat-anne" }, "detail": [{ "type": "break-glass-reason", "valueString": "unconscious" }, { "type": "access-basis", "valueString": "vaerdispring" }] },
                { "what": { "reference": "Observation/o1" } },
                { "role": { "code": "24" }, "query": "R0VUIC9zZWNyZXQ=" },
                { "what": { "identifier": { "value": "req-1" } }, "type": { "code": "XrequestId" } }
            ]
        });
        citizen_view(&mut event);
        let text = event.to_string();
        for secret in [
            "10.0.0.1",
            "secret subject",
            "sub-1",
            "jti",
            "0501792275",
            "node-7",
            "internal",
            "req-1",
            "R0VU",
            "client-1",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        for shown in [
            "Mette Kjær",
            "7170",
            "Region",
            "12345678",
            "Journalsystem",
            "BTG",
            "unconscious",
            "vaerdispring",
            "Observation/o1",
            // Her authorisation id (public), by which the citizen can block her.
            "NS363",
            "2026-11-30T07:00:00Z",
        ] {
            assert!(text.contains(shown), "{shown} missing: {text}");
        }
        assert_eq!(event["agent"].as_array().unwrap().len(), 3);
        assert_eq!(
            common_name("C=DK, serialNumber=UI:DK-O:G:1, CN=Journalsystem").as_deref(),
            Some("Journalsystem")
        );
        assert_eq!(
            common_name("Journalsystem").as_deref(),
            Some("Journalsystem")
        );
        assert_eq!(common_name("C=DK, serialNumber=UI:DK-O:G:1"), None);
        // A user without a name is shown by role, never by the token subject.
        let mut nameless = json!({ "resourceType": "AuditEvent", "agent": [
            { "type": { "coding": [{ "code": "humanuser" }] }, "who": { "display": "0501792275" }, "requestor": true }
        ]});
        citizen_view(&mut nameless);
        assert!(!nameless.to_string().contains("0501792275"));
    }
}
