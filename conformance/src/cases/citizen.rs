//! The citizen listener: citizens' browsers have no client certificate, so it asks for none;
//! only a citizen's own token counts there, and it reaches only their own audit log.

use super::audit::only_about;
use super::{case, check, expect_one_of};
use crate::client::Answer;
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "CITIZEN-01",
            "the citizen listener asks for no client certificate and serves the citizen's log",
            "MinLog: citizens read who accessed their record from a browser (no client certificate)",
            [CitizenListener, PatientToken],
            serves_the_log
        ),
        case!(
            "CITIZEN-02",
            "there, the citizen's log holds only events about them",
            "MinLog: only one's own; IHE BALP PatientQuery: one event per patient",
            [CitizenListener, PatientToken],
            only_own
        ),
        case!(
            "CITIZEN-03",
            "there, a professional's token is refused",
            "RFC 8705 §3: a certificate-bound token needs its certificate; Portvagt: citizens only",
            [CitizenListener, UserToken],
            professional_refused
        ),
        case!(
            "CITIZEN-04",
            "there, another patient's log is refused",
            "MinLog: only one's own log",
            [CitizenListener, PatientToken],
            other_log_refused
        ),
        case!(
            "CITIZEN-05",
            "there, the audit log cannot be written",
            "IHE BALP: the audit trail is written by the gateway only",
            [CitizenListener, PatientToken],
            no_writes
        ),
        case!(
            "CITIZEN-06",
            "there, the operator's metrics are not served",
            "Portvagt: the citizen listener serves citizens, not operators",
            [CitizenListener, PatientToken],
            no_metrics
        ),
        case!(
            "CITIZEN-07",
            "there, the patient's token for the API (its audience) is refused",
            "RFC 9068 §4 / RFC 8707: a token is for the audience it names; Portvagt: audiences per listener",
            [CitizenListener, PatientToken],
            api_token_refused
        ),
        case!(
            "CITIZEN-08",
            "the citizen listener's token is refused on the API, even with a client certificate",
            "RFC 9068 §4 / RFC 8707: a token is for the audience it names; Portvagt: audiences per listener",
            [CitizenListener, PatientToken],
            citizen_token_refused_on_the_api
        ),
    ]
}

async fn get(ctx: &Ctx, path: &str, token: Option<&str>) -> Result<Answer, String> {
    ctx.send_citizen(http::Method::GET, path, token, None).await
}

/// The citizen's own token for this listener (its audience).
fn patient(ctx: &Ctx) -> Option<&str> {
    ctx.settings.tokens.citizen.as_deref()
}

async fn serves_the_log(ctx: &Ctx) -> Verdict {
    match get(ctx, "AuditEvent", patient(ctx)).await {
        Ok(answer) if answer.status == 200 => check(
            answer.json()["resourceType"] == "Bundle",
            "the answer is not a Bundle",
        ),
        Ok(answer) => Verdict::Fail(format!(
            "expected 200 with the patient token and no certificate, got {} {}",
            answer.status,
            answer.detail_code()
        )),
        Err(error) => Verdict::Fail(format!("no answer without a client certificate: {error}")),
    }
}

async fn only_own(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    match get(ctx, "AuditEvent?_count=200", patient(ctx)).await {
        Ok(answer) if answer.status == 200 => only_about(&answer.json(), &own),
        other => expect_one_of(&other, &[200]),
    }
}

async fn professional_refused(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let answer = get(
        ctx,
        &format!("AuditEvent?patient={own}"),
        ctx.settings.tokens.user.as_deref(),
    )
    .await;
    expect_one_of(&answer, &[401, 403])
}

async fn other_log_refused(ctx: &Ctx) -> Verdict {
    let other = ctx.settings.other_patient.clone().unwrap_or_default();
    let answer = get(ctx, &format!("AuditEvent?patient={other}"), patient(ctx)).await;
    expect_one_of(&answer, &[403])
}

async fn no_writes(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .send_citizen(
            http::Method::POST,
            "AuditEvent",
            patient(ctx),
            Some(serde_json::json!({ "resourceType": "AuditEvent" })),
        )
        .await;
    expect_one_of(&answer, &[403])
}

async fn api_token_refused(ctx: &Ctx) -> Verdict {
    let answer = get(ctx, "AuditEvent", ctx.settings.tokens.patient.as_deref()).await;
    expect_one_of(&answer, &[401])
}

async fn citizen_token_refused_on_the_api(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let answer = ctx.get(&format!("Patient/{own}"), patient(ctx)).await;
    expect_one_of(&answer, &[401])
}

async fn no_metrics(ctx: &Ctx) -> Verdict {
    let Some((client, _)) = &ctx.citizen else {
        return Verdict::Fail("no citizen listener".into());
    };
    match client.send(http::Method::GET, "/metrics", &[], None).await {
        Ok(answer) => check(
            answer.status != 200
                && !String::from_utf8_lossy(&answer.body).contains("portvagt_requests_total"),
            format!("/metrics answered {}", answer.status),
        ),
        Err(_) => Verdict::Pass,
    }
}
