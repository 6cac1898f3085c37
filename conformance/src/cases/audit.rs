//! The audit trail as a citizen sees it (IHE BALP, the MinLog idea): an access produces an
//! AuditEvent the patient can read, the patient sees only their own, and others cannot read it.

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
    ]
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
