//! The accesses to follow up: every værdispring (a professional bound by the treatment
//! relationship check reading a patient she has no relationship with, in an emergency, with a
//! reason), read from the audit spool: when, who (name, authorisation id, role), for which
//! organisation, which patient, why, and what the access was.

use std::io::BufReader;
use std::path::Path;

use serde_json::Value;

use super::spool::{RecordLine, read_line, segments};

/// One access to follow up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FollowUp {
    /// `AuditEvent.recorded`.
    pub recorded: String,
    /// The professional's name (or token subject).
    pub who: String,
    /// Her authorisation id, when the token named one.
    pub authorization_id: Option<String>,
    /// Her roles.
    pub roles: Vec<String>,
    /// The organisation she acted for (`system|value`, or its name).
    pub organisation: Option<String>,
    /// `Patient/<id>`.
    pub patient: String,
    /// The reason she gave.
    pub reason: Option<String>,
    /// The access (the event's subtype: read, search-type, ...).
    pub access: String,
    /// Whether it was answered (`0`) or refused.
    pub outcome: String,
    /// The request id, to find the whole record.
    pub request_id: Option<String>,
}

/// The værdispring accesses in the spool at `dir` recorded at or after `since` (RFC 3339, or a
/// date: its midnight UTC), oldest first. The spool holds what this replica recorded and has
/// not deleted after shipping (`keep_shipped`); the audit repository holds the rest.
pub fn follow_ups(dir: &Path, since: Option<&str>) -> std::io::Result<Vec<FollowUp>> {
    let since = since
        .map(|text| {
            instant(text).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("--since {text:?} is neither an RFC 3339 time nor a date (2026-12-01)"),
                )
            })
        })
        .transpose()?;
    let mut found = Vec::new();
    let mut line = Vec::new();
    for (_, path) in segments(dir)? {
        let mut reader = BufReader::new(std::fs::File::open(&path)?);
        // The segment header first.
        read_line(&mut reader, &mut line)?;
        while read_line(&mut reader, &mut line)? > 0 {
            let Ok(record) = RecordLine::parse(line.trim_ascii_end()) else {
                continue;
            };
            let Some(Ok(event)) = record
                .event
                .map(|raw| serde_json::from_str::<Value>(raw.get()))
            else {
                continue;
            };
            if let Some(follow_up) = follow_up(&event)
                && since.is_none_or(|since| {
                    instant(&follow_up.recorded).is_none_or(|recorded| recorded >= since)
                })
            {
                found.push(follow_up);
            }
        }
    }
    Ok(found)
}

/// A time as RFC 3339, or a date as its midnight UTC.
fn instant(text: &str) -> Option<time::OffsetDateTime> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(text, rfc3339)
        .ok()
        .or_else(|| time::OffsetDateTime::parse(&format!("{text}T00:00:00Z"), rfc3339).ok())
}

/// The event as an access to follow up, if its patient's basis is værdispring.
pub fn follow_up(event: &Value) -> Option<FollowUp> {
    let patient_entity = event.get("entity")?.as_array()?.iter().find(|entity| {
        entity
            .get("detail")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|d| d["type"] == "access-basis" && d["valueString"] == "vaerdispring")
    })?;
    let text = |value: &Value| value.as_str().map(str::to_owned);
    let agents: Vec<&Value> = event
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let agent = |code: &str| {
        agents
            .iter()
            .find(|agent| agent.pointer("/type/coding/0/code") == Some(&Value::from(code)))
            .copied()
    };
    let user = agent("humanuser");
    let identifier = |who: &Value| {
        let identifier = who.get("identifier")?;
        Some(format!(
            "{}|{}",
            identifier
                .get("system")
                .and_then(Value::as_str)
                .unwrap_or(""),
            identifier.get("value").and_then(Value::as_str)?
        ))
    };
    Some(FollowUp {
        recorded: text(event.get("recorded")?)?,
        who: user
            .and_then(|u| u.get("name").or_else(|| u.pointer("/who/display")))
            .and_then(text)
            .unwrap_or_default(),
        authorization_id: user
            .and_then(|u| u.get("extension"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| {
                e.pointer("/valueIdentifier/system")
                    == Some(&Value::from("https://autregweb.sst.dk"))
            })
            .and_then(|e| e.pointer("/valueIdentifier/value"))
            .and_then(text),
        roles: user
            .and_then(|u| u.get("role"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.pointer("/coding/0/code").and_then(text))
            .collect(),
        organisation: agent("PROV").and_then(|o| {
            let who = o.get("who")?;
            identifier(who).or_else(|| who.get("display").and_then(text))
        }),
        patient: patient_entity
            .pointer("/what/reference")
            .and_then(text)
            .unwrap_or_default(),
        reason: patient_entity
            .get("detail")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|d| d["type"] == "break-glass-reason")
            .and_then(|d| d.get("valueString"))
            .and_then(text),
        access: event
            .pointer("/subtype/0/code")
            .and_then(text)
            .unwrap_or_default(),
        outcome: event.get("outcome").and_then(text).unwrap_or_default(),
        request_id: event
            .get("entity")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| e.pointer("/type/code") == Some(&Value::from("XrequestId")))
            .and_then(|e| e.pointer("/what/identifier/value"))
            .and_then(text),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_vaerdispring_is_followed_up_with_who_whom_when_and_why() {
        let event = |basis: &str| {
            json!({ "resourceType": "AuditEvent", "recorded": "2026-12-04T10:00:00Z", "outcome": "0",
                "subtype": [{ "code": "read" }],
                "agent": [
                    { "type": { "coding": [{ "code": "humanuser" }] }, "name": "Mette Kjær",
                      "who": { "display": "Mette Kjær" }, "role": [{ "coding": [{ "code": "7170" }] }],
                      "extension": [{ "valueIdentifier": { "system": "https://autregweb.sst.dk", "value": "NS363" } }] },
                    { "type": { "coding": [{ "code": "PROV" }] },
                      "who": { "identifier": { "system": "urn:oid:1.2.208.176.1.1", "value": "486441000016005" } } }],
                "entity": [
                    { "what": { "reference": "Patient/pat-bo" }, "detail": [
                        { "type": "break-glass-reason", "valueString": "bevidstløs" },
                        { "type": "access-basis", "valueString": basis }] },
                    { "what": { "identifier": { "value": "req-1" } }, "type": { "code": "XrequestId" } }] })
        };
        assert_eq!(follow_up(&event("relationship EpisodeOfCare/e1")), None);
        // Times compare as times, whatever their offset.
        assert!(instant("2026-12-04T10:00:00Z") > instant("2026-12-04T10:30:00+01:00"));
        assert_eq!(instant("2026-12-04"), instant("2026-12-04T00:00:00Z"));
        assert_eq!(instant("26-12-04"), None);
        assert_eq!(
            follow_up(&event("vaerdispring")),
            Some(FollowUp {
                recorded: "2026-12-04T10:00:00Z".into(),
                who: "Mette Kjær".into(),
                authorization_id: Some("NS363".into()),
                roles: vec!["7170".into()],
                organisation: Some("urn:oid:1.2.208.176.1.1|486441000016005".into()),
                patient: "Patient/pat-bo".into(),
                reason: Some("bevidstløs".into()),
                access: "read".into(),
                outcome: "0".into(),
                request_id: Some("req-1".into()),
            })
        );
    }
}
