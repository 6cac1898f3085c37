//! The audit trail as a citizen sees it (IHE BALP, the MinLog idea): an access produces an
//! AuditEvent the patient can read, the patient sees only their own, and others cannot read it;
//! accesses that reveal less than a read (a count, a `HEAD`) and each entry of a batch are in
//! the log too.

use std::collections::HashSet;
use std::time::Duration;

use super::{case, check, expect_status};
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "AUDIT-01",
            "an access produces an AuditEvent the patient can read",
            "IHE BALP: every access to a patient's data is recorded; the patient may read it",
            [UserToken, PatientToken],
            access_recorded
        ),
        case!(
            "AUDIT-02",
            "the patient's log holds only events about them",
            "IHE BALP PatientQuery: one event per patient; MinLog: only one's own",
            [PatientToken],
            only_own
        ),
        case!(
            "AUDIT-03",
            "a user token cannot read a patient's log",
            "Portvagt: audit logs are the citizen's, unless a rule names AuditEvent",
            [UserToken, PatientToken],
            user_refused
        ),
        case!(
            "AUDIT-04",
            "the patient's log shows no internal fields",
            "MinLog: who, when, what, why; never addresses, token ids, raw queries or request ids",
            [UserToken, PatientToken],
            no_internals
        ),
        case!(
            "AUDIT-05",
            "a count-only search about the patient reaches the patient's log",
            "IHE BALP PatientQuery: a count is an access to the patient's data too",
            [UserToken, PatientToken],
            count_recorded
        ),
        case!(
            "AUDIT-06",
            "a HEAD read of the patient reaches the patient's log",
            "IHE BALP: HEAD answers whether the record exists, which is an access",
            [UserToken, PatientToken],
            head_recorded
        ),
        case!(
            "AUDIT-07",
            "each entry of a batch reaches the patient's log as its own event",
            "IHE BALP: one AuditEvent per access; a batch is several accesses",
            [UserToken, PatientToken],
            batch_entries_recorded
        ),
    ]
}

/// The ids of the events on the first page of the patient's log (newest first).
async fn event_ids(ctx: &Ctx) -> Result<HashSet<String>, Verdict> {
    let bundle = events(ctx).await?;
    Ok(bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["resource"]["id"].as_str())
        .map(str::to_owned)
        .collect())
}

/// Waits (up to 15 s: shipping takes a moment) until the patient's log holds new events, not
/// among `before`, with each of the `subtypes` (restful-interaction codes).
async fn new_events(ctx: &Ctx, before: &HashSet<String>, subtypes: &[&str]) -> Verdict {
    let mut missing = subtypes.to_vec();
    for _ in 0..60 {
        let bundle = match events(ctx).await {
            Ok(bundle) => bundle,
            Err(verdict) => return verdict,
        };
        let mut found: Vec<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| &entry["resource"])
            .filter(|event| event["id"].as_str().is_some_and(|id| !before.contains(id)))
            .filter_map(|event| event["subtype"][0]["code"].as_str())
            .map(str::to_owned)
            .collect();
        missing = subtypes
            .iter()
            .copied()
            .filter(|wanted| {
                let at = found.iter().position(|code| code == wanted);
                at.map(|at| found.remove(at)).is_none()
            })
            .collect();
        if missing.is_empty() {
            return Verdict::Pass;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Verdict::Fail(format!(
        "no new event ({}) in the patient's log within 15 s",
        missing.join(", ")
    ))
}

/// Passes when `method path` (with `body`) by the user token is answered 200 and then adds
/// events with `subtypes` to the patient's log.
async fn logged_after(
    ctx: &Ctx,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
    subtypes: &[&str],
) -> Verdict {
    let before = match event_ids(ctx).await {
        Ok(ids) => ids,
        Err(verdict) => return verdict,
    };
    let answer = ctx
        .send(method, path, ctx.settings.tokens.user.as_deref(), body)
        .await;
    if !matches!(&answer, Ok(answer) if answer.status == 200) {
        return expect_status(&answer, 200);
    }
    new_events(ctx, &before, subtypes).await
}

async fn count_recorded(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let path = format!("Observation?patient={own}&_summary=count");
    logged_after(ctx, http::Method::GET, &path, None, &["search-type"]).await
}

async fn head_recorded(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let path = format!("Patient/{own}");
    logged_after(ctx, http::Method::HEAD, &path, None, &["read"]).await
}

async fn batch_entries_recorded(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let batch = serde_json::json!({
        "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": format!("Patient/{own}") } },
            { "request": { "method": "GET", "url": format!("Observation?patient={own}") } },
        ]
    });
    logged_after(
        ctx,
        http::Method::POST,
        "",
        Some(batch),
        &["read", "search-type"],
    )
    .await
}

async fn no_internals(ctx: &Ctx) -> Verdict {
    match events(ctx).await {
        Ok(bundle) => {
            let text = bundle["entry"].to_string();
            let leaked: Vec<&str> = [
                "\"network\"",
                "\"policy\"",
                "XrequestId",
                "\"query\"",
                "\"altId\"",
            ]
            .into_iter()
            .filter(|field| text.contains(field))
            .collect();
            check(
                leaked.is_empty(),
                format!("internal fields shown: {leaked:?}"),
            )
        }
        Err(verdict) => verdict,
    }
}

async fn events(ctx: &Ctx) -> Result<serde_json::Value, Verdict> {
    match ctx
        .get(
            "AuditEvent?_count=200",
            ctx.settings.tokens.patient.as_deref(),
        )
        .await
    {
        Ok(answer) if answer.status == 200 => Ok(answer.json()),
        other => Err(expect_status(&other, 200)),
    }
}

/// The patients an AuditEvent is about.
fn about(event: &serde_json::Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| entity["type"]["code"] == "1")
        .filter_map(|entity| entity["what"]["reference"].as_str())
        .map(|reference| reference.trim_start_matches("Patient/").to_owned())
        .collect()
}

async fn access_recorded(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let read = ctx
        .get(
            &format!("Patient/{own}"),
            ctx.settings.tokens.user.as_deref(),
        )
        .await;
    let Ok(read) = read else {
        return Verdict::Fail("the read got no answer".into());
    };
    let request_id = read.header("x-request-id");
    // Shipping to the audit repository takes a moment.
    for _ in 0..60 {
        match events(ctx).await {
            Ok(bundle)
                if bundle.to_string().contains(request_id)
                    || bundle["entry"].as_array().is_some_and(|e| !e.is_empty()) =>
            {
                return Verdict::Pass;
            }
            Ok(_) => {}
            Err(verdict) => return verdict,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Verdict::Fail("no AuditEvent reached the patient's log within 15 s".into())
}

async fn only_own(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    match events(ctx).await {
        Ok(bundle) => only_about(&bundle, &own),
        Err(verdict) => verdict,
    }
}

/// Pass when every AuditEvent in `bundle` is about `own` alone.
pub(super) fn only_about(bundle: &serde_json::Value, own: &str) -> Verdict {
    let strangers: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| about(&entry["resource"]))
        .filter(|patient| patient != own)
        .collect();
    check(strangers.is_empty(), format!("events about {strangers:?}"))
}

async fn user_refused(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    expect_status(
        &ctx.get(
            &format!("AuditEvent?patient={own}"),
            ctx.settings.tokens.user.as_deref(),
        )
        .await,
        403,
    )
}
