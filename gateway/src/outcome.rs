//! FHIR `OperationOutcome` responses (FHIR R4 §2.37 OperationOutcome, `issue-type` codes).
//!
//! Every error the gateway itself answers is one of these, with a stable Portvagt detail code
//! in `details.coding` that tells an integrator what to fix.

use http::{HeaderValue, Response, StatusCode, header};
use portvagt_policy::DenyReason;
use serde_json::json;

use crate::body::{Body, full};

/// The code system of Portvagt's detail codes.
pub const DETAIL_SYSTEM: &str = "urn:portvagt:error-code";

/// The FHIR content type.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A gateway error answer: status, FHIR issue type, stable detail code and a human text.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status.
    pub status: StatusCode,
    /// FHIR `issue.code` (the `issue-type` value set).
    pub issue_type: &'static str,
    /// Portvagt detail code (stable).
    pub code: &'static str,
    /// What went wrong, for a person; never backend internals.
    pub text: String,
}

impl Outcome {
    /// An outcome.
    pub fn new(
        status: StatusCode,
        issue_type: &'static str,
        code: &'static str,
        text: impl Into<String>,
    ) -> Self {
        Self {
            status,
            issue_type,
            code,
            text: text.into(),
        }
    }

    /// The `OperationOutcome` JSON.
    pub fn to_json(&self, request_id: Option<&str>) -> serde_json::Value {
        let mut issue = json!({
            "severity": "error",
            "code": self.issue_type,
            "details": {
                "coding": [{ "system": DETAIL_SYSTEM, "code": self.code }],
                "text": self.text,
            },
        });
        if let Some(id) = request_id {
            issue["diagnostics"] = json!(format!("request id {id}"));
        }
        json!({ "resourceType": "OperationOutcome", "issue": [issue] })
    }

    /// The HTTP response (FHIR JSON; the format layer writes it as XML for an XML client).
    pub fn into_response(self, request_id: Option<&str>) -> Response<Body> {
        let body = serde_json::to_vec(&self.to_json(request_id)).unwrap_or_default();
        let mut response = Response::new(full(body));
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        response
    }
}

/// The gateway's answer for a resource that is not there.
pub fn not_found() -> Outcome {
    Outcome::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "not-found",
        "the resource was not found",
    )
}

/// The answer to a policy denial (also used for denied batch entries).
pub fn denied_outcome(reason: DenyReason) -> Outcome {
    if reason == DenyReason::Withheld {
        return not_found();
    }
    let code = reason.code();
    Outcome::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        code,
        format!("access denied: {code}"),
    )
}

/// An OperationOutcome of a backend's, rebuilt of what the gateway passes on: its issues'
/// severity, code and details (their coded words and text), with the backend's base in them
/// as the gateway's (`backend_base` → `public_base`); nothing else of the backend's (a
/// `contained` resource, narrative, extensions). While anything is `withheld` from the caller,
/// only the codes: `diagnostics`, `expression`, `location`, a detail's text and a code's
/// display may name a resource the caller may not learn of ("first reference found was
/// Observation/5"). `None` when `answer` is no OperationOutcome whose issues can be read so.
pub fn backend_outcome_rebuilt(
    answer: &serde_json::Value,
    withheld: bool,
    backend_base: &str,
    public_base: &str,
) -> Option<Vec<u8>> {
    serde_json::to_vec(&backend_outcome_tree(
        answer,
        withheld,
        backend_base,
        public_base,
    )?)
    .ok()
}

/// [`backend_outcome_rebuilt`] as a tree (an outcome inside a batch answer's entry).
pub fn backend_outcome_tree(
    answer: &serde_json::Value,
    withheld: bool,
    backend_base: &str,
    public_base: &str,
) -> Option<serde_json::Value> {
    use serde_json::{Map, Value};
    if answer.get("resourceType").and_then(Value::as_str) != Some("OperationOutcome") {
        return None;
    }
    let text = |value: &Value| {
        value.as_str().map(|text| {
            Value::String(if backend_base.is_empty() {
                text.to_owned()
            } else {
                text.replace(backend_base, public_base)
            })
        })
    };
    let copied = |from: &Map<String, Value>, names: &[&str]| {
        let mut kept = Map::new();
        for name in names {
            if let Some(value) = from.get(*name).and_then(text) {
                kept.insert((*name).to_owned(), value);
            }
        }
        kept
    };
    let issues = answer.get("issue")?.as_array()?;
    let mut rebuilt_issues = Vec::with_capacity(issues.len());
    for issue in issues {
        let issue = issue.as_object()?;
        let mut kept = copied(issue, &["severity", "code"]);
        let (concept_words, coding_words): (&[&str], &[&str]) = if withheld {
            (&[], &["system", "code"])
        } else {
            (&["text"], &["system", "code", "display"])
        };
        if let Some(details) = issue.get("details").and_then(Value::as_object) {
            let mut concept = copied(details, concept_words);
            let codings: Vec<Value> = details
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .map(|coding| copied(coding, coding_words))
                .filter(|coding| !coding.is_empty())
                .map(Value::Object)
                .collect();
            if !codings.is_empty() {
                concept.insert("coding".into(), Value::Array(codings));
            }
            // FHIR has no empty elements: a concept with nothing left in it goes.
            if !concept.is_empty() {
                kept.insert("details".into(), Value::Object(concept));
            }
        }
        if !withheld {
            kept.extend(copied(issue, &["diagnostics"]));
            for list in ["expression", "location"] {
                let strings: Vec<Value> = issue
                    .get(list)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(text)
                    .collect();
                if !strings.is_empty() {
                    kept.insert(list.into(), Value::Array(strings));
                }
            }
        }
        rebuilt_issues.push(Value::Object(kept));
    }
    let mut outcome = Map::new();
    outcome.insert("resourceType".into(), "OperationOutcome".into());
    outcome.insert("issue".into(), Value::Array(rebuilt_issues));
    Some(Value::Object(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_carries_issue_type_detail_code_and_request_id() {
        let outcome = Outcome::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "insufficient-scope",
            "no scope",
        );
        let value = outcome.to_json(Some("abc"));
        assert_eq!(value["resourceType"], "OperationOutcome");
        assert_eq!(value["issue"][0]["code"], "forbidden");
        assert_eq!(
            value["issue"][0]["details"]["coding"][0]["code"],
            "insufficient-scope"
        );
        assert_eq!(value["issue"][0]["diagnostics"], "request id abc");
    }
}
