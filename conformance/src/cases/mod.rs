//! The cases, by area. Ids are stable: `TLS-`, `AUTH-`, `SCOPE-`, `PAT-`, `CONSENT-`, `ERR-`,
//! `XCHG-`, `AUDIT-`, `CITIZEN-`, `RELATION-`.

use base64::Engine as _;

use crate::client::Answer;
use crate::{Case, Ctx, Verdict};

mod audit;
mod authentication;
mod citizen;
pub use self::citizen::block_request;
mod compartment;
mod consent;
mod errors;
mod exchange;
mod relationship;
mod scopes;
mod transport;

/// Declares a case.
macro_rules! case {
    ($id:literal, $title:literal, $requirement:literal, [$($need:ident),*], $check:path) => {
        $crate::Case {
            id: $id,
            title: $title,
            requirement: $requirement,
            needs: &[$($crate::Need::$need),*],
            check: |ctx| Box::pin($check(ctx)),
        }
    };
}
pub(crate) use case;

/// Every case, in the order they run.
pub fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(transport::cases());
    cases.extend(authentication::cases());
    cases.extend(scopes::cases());
    cases.extend(compartment::cases());
    cases.extend(consent::cases());
    cases.extend(relationship::cases());
    cases.extend(errors::cases());
    cases.extend(exchange::cases());
    cases.extend(audit::cases());
    cases.extend(citizen::cases());
    cases
}

/// Pass when every one of `queries` is refused (403) with `token`; else the first that is not.
pub(crate) async fn all_refused(ctx: &Ctx, token: Option<&str>, queries: &[String]) -> Verdict {
    for query in queries {
        match ctx.get(query, token).await {
            Ok(answer) if answer.status == 403 => {}
            other => {
                return match expect_status(&other, 403) {
                    Verdict::Fail(why) => Verdict::Fail(format!("{query}: {why}")),
                    verdict => verdict,
                };
            }
        }
    }
    Verdict::Pass
}

/// Pass when the answer has status `expected`.
pub(crate) fn expect_status(answer: &Result<Answer, String>, expected: u16) -> Verdict {
    expect_one_of(answer, &[expected])
}

/// Pass when the answer has one of `expected`.
pub(crate) fn expect_one_of(answer: &Result<Answer, String>, expected: &[u16]) -> Verdict {
    match answer {
        Ok(answer) if expected.contains(&answer.status.as_u16()) => Verdict::Pass,
        Ok(answer) => Verdict::Fail(format!(
            "expected {}, got {} {}",
            expected
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            answer.status.as_u16(),
            describe(answer)
        )),
        Err(error) => Verdict::Fail(format!("no answer: {error}")),
    }
}

/// What a failure message says about an answer: its detail code, or the start of its body.
pub(crate) fn describe(answer: &Answer) -> String {
    let code = answer.detail_code();
    if !code.is_empty() {
        return format!("({code})");
    }
    let text = String::from_utf8_lossy(&answer.body);
    let short: String = text.chars().take(120).collect();
    if short.is_empty() {
        String::new()
    } else {
        format!("({short})")
    }
}

/// Pass when `ok`, else fail with `message`.
pub(crate) fn check(ok: bool, message: impl Into<String>) -> Verdict {
    if ok {
        Verdict::Pass
    } else {
        Verdict::Fail(message.into())
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .unwrap_or_default()
}

/// `token` with its last signature character changed.
pub(crate) fn altered_signature(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    if let Some(last) = chars.last_mut() {
        *last = if *last == 'A' { 'B' } else { 'A' };
    }
    chars.into_iter().collect()
}

/// `token` with a wider `scope` in its payload and the old signature.
pub(crate) fn altered_payload(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return format!("{token}x");
    };
    let mut claims: serde_json::Value = serde_json::from_slice(&unb64(payload)).unwrap_or_default();
    claims["scope"] = "user/*.cruds system/*.cruds".into();
    format!(
        "{header}.{}.{signature}",
        b64(claims.to_string().as_bytes())
    )
}

/// `token`'s claims under `alg: none`, unsigned.
pub(crate) fn unsigned(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap_or_default();
    format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#))
}

/// The patients an entry's resource names on its `subject`/`patient`, or a Patient's own id.
pub(crate) fn entry_patients(bundle: &serde_json::Value) -> Vec<String> {
    let mut patients = Vec::new();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        if resource["resourceType"] == "Patient" {
            if let Some(id) = resource["id"].as_str() {
                patients.push(id.to_owned());
            }
            continue;
        }
        for field in ["subject", "patient"] {
            if let Some(reference) = resource[field]["reference"].as_str()
                && let Some(id) = reference.rsplit_once("Patient/").map(|(_, id)| id)
            {
                patients.push(id.split('/').next().unwrap_or_default().to_owned());
            }
        }
    }
    patients
}
