//! The citizen listener: citizens' browsers have no client certificate, so it asks for none;
//! only a citizen's own token counts there, and it reaches only their own audit log. Where
//! citizens block (`[citizen] blocks`), she blocks a professional of her own log there, of one
//! shape only, and lifts the block again.

use std::time::Duration;

use serde_json::{Value, json};

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
        case!(
            "CITIZEN-09",
            "she blocks the professional of an access in her log: refused at once; lifted, they read again",
            "Negative consent made by the citizen (MinSpærring's idea, from her own MinLog); Portvagt: effect within seconds",
            [CitizenBlocks],
            block_and_lift
        ),
        case!(
            "CITIZEN-10",
            "there, a block of another patient's record is refused",
            "A citizen consents for herself only (R4 Consent.patient)",
            [CitizenBlocks],
            other_patients_block_refused
        ),
        case!(
            "CITIZEN-11",
            "there, a block of someone the access does not name is refused",
            "Portvagt: she blocks someone real, taken from an access in her own log",
            [CitizenBlocks],
            unnamed_actor_refused
        ),
        case!(
            "CITIZEN-12",
            "there, a Consent of another shape (a permit) is refused",
            "Portvagt: one shape only (a deny of one actor); R4 Consent.provision.type",
            [CitizenBlocks],
            permit_refused
        ),
        case!(
            "CITIZEN-13",
            "there, her Consents cannot be replaced or deleted",
            "Portvagt: a block is lifted (status inactive), never rewritten or erased; its history stays",
            [CitizenBlocks],
            no_replace_or_delete
        ),
    ]
}

const BLOCKED_FROM: &str = "urn:portvagt:consent:blocked-from";
const AUTHORISATION: &str = "https://autregweb.sst.dk";

/// What a citizen posts to block `actor` (a Reference's `reference` or `identifier`) in
/// `patient`'s record, taken from the AuditEvent `event` of her log: the one shape Portvagt
/// takes (`[citizen] blocks`).
pub fn block_request(patient: &str, event: &str, actor: Value) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "patient": { "reference": format!("Patient/{patient}") },
        "provision": { "type": "deny", "actor": [{ "reference": actor }] },
        "extension": [{ "url": BLOCKED_FROM, "valueReference": { "reference": format!("AuditEvent/{event}") } }]
    })
}

/// A claim of a token (its payload read, not verified).
fn claim(token: &str, name: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

/// The events of her log (newest first), in her view.
async fn her_events(ctx: &Ctx) -> Result<Vec<Value>, String> {
    let answer = get(ctx, "AuditEvent?_count=50&_sort=-date", patient(ctx)).await?;
    if answer.status != 200 {
        return Err(format!("her log answered {}", answer.status));
    }
    Ok(answer.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry["resource"].clone())
        .collect())
}

/// The newest event of her log where the user has authorisation id `authorisation`, once the
/// audit repository has it.
async fn event_by(ctx: &Ctx, authorisation: &str) -> Result<Value, String> {
    for _ in 0..60 {
        let found = her_events(ctx).await?.into_iter().find(|event| {
            event.to_string().contains(&format!(
                "\"system\":\"{AUTHORISATION}\",\"value\":\"{authorisation}\""
            ))
        });
        if let Some(event) = found {
            return Ok(event);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!(
        "no access by authorisation id {authorisation} reached her log within 15 s"
    ))
}

async fn colleague_reads(ctx: &Ctx) -> Result<Answer, String> {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    ctx.get(
        &format!("Patient/{own}"),
        ctx.settings.tokens.colleague.as_deref(),
    )
    .await
}

async fn block_and_lift(ctx: &Ctx) -> Verdict {
    match block_and_lift_steps(ctx).await {
        Ok(()) => Verdict::Pass,
        Err(failure) => Verdict::Fail(failure),
    }
}

async fn block_and_lift_steps(ctx: &Ctx) -> Result<(), String> {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let colleague = ctx.settings.tokens.colleague.as_deref().unwrap_or_default();
    let authorisation =
        claim(colleague, "authorization_id").ok_or("tokens.colleague names no authorization_id")?;
    let status = colleague_reads(ctx).await?.status;
    if status != 200 {
        return Err(format!(
            "the colleague must read {own} before any block, got {status}"
        ));
    }
    let event = event_by(ctx, &authorisation).await?;
    let event_id = event["id"].as_str().ok_or("the event has no id")?;
    let actor = json!({ "identifier": { "system": AUTHORISATION, "value": authorisation } });
    let made = ctx
        .send_citizen(
            http::Method::POST,
            "Consent",
            patient(ctx),
            Some(block_request(&own, event_id, actor)),
        )
        .await;
    let id = match &made {
        Ok(made) if [200, 201].contains(&made.status.as_u16()) => {
            made.json()["id"].as_str().map(str::to_owned)
        }
        _ => None,
    };
    let Some(id) = id else {
        // Whatever came back, a block may have been made: lifted, so the deployment is left
        // as it was.
        lift_blocks_of(ctx, &authorisation).await;
        return Err(match made {
            Ok(made) => format!(
                "making the block answered {} {}",
                made.status,
                made.detail_code()
            ),
            Err(error) => format!("making the block: {error}"),
        });
    };
    let blocked = colleague_reads(ctx).await;
    // Lifted whatever the check found, so the deployment is left as it was.
    let lifted = ctx
        .patch_citizen(
            &format!("Consent/{id}"),
            patient(ctx),
            &json!([{ "op": "replace", "path": "/status", "value": "inactive" }]),
        )
        .await?;
    let blocked = blocked?;
    if (blocked.status.as_u16(), blocked.detail_code().as_str()) != (403, "consent-block") {
        return Err(format!(
            "the blocked colleague must be refused (403 consent-block), got {} {}",
            blocked.status,
            blocked.detail_code()
        ));
    }
    if lifted.status != 200 || lifted.json()["status"] != "inactive" {
        return Err(format!("lifting the block answered {}", lifted.status));
    }
    let again = colleague_reads(ctx).await?.status;
    if again != 200 {
        return Err(format!(
            "the colleague must read again once the block is lifted, got {again}"
        ));
    }
    Ok(())
}

/// Lifts every active block of hers that names `authorisation` (cleaning up after a failure).
async fn lift_blocks_of(ctx: &Ctx, authorisation: &str) {
    let Ok(answer) = get(ctx, "Consent?status=active&_count=100", patient(ctx)).await else {
        return;
    };
    let ids: Vec<String> = answer.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| &entry["resource"])
        .filter(|consent| {
            consent
                .to_string()
                .contains(&format!("\"value\":\"{authorisation}\""))
        })
        .filter_map(|consent| consent["id"].as_str().map(str::to_owned))
        .collect();
    for id in ids {
        lift(ctx, &id).await;
    }
}

async fn lift(ctx: &Ctx, id: &str) {
    let _ = ctx
        .patch_citizen(
            &format!("Consent/{id}"),
            patient(ctx),
            &json!([{ "op": "replace", "path": "/status", "value": "inactive" }]),
        )
        .await;
}

/// Pass when the answer is `status` with the detail code `code` (a Portvagt deployment's own
/// words: a backend's validation, or a listener that takes no blocks at all, says otherwise).
/// A block made where it should have been refused is lifted again.
async fn refused_as(
    ctx: &Ctx,
    answer: &Result<Answer, String>,
    status: u16,
    code: &str,
) -> Verdict {
    match answer {
        Ok(answer) if answer.status.as_u16() == status && answer.detail_code() == code => {
            Verdict::Pass
        }
        Ok(answer) => {
            if answer.status.is_success()
                && let Some(id) = answer.json()["id"].as_str()
            {
                lift(ctx, id).await;
            }
            Verdict::Fail(format!(
                "expected {status} {code}, got {} {}",
                answer.status.as_u16(),
                super::describe(answer)
            ))
        }
        Err(error) => Verdict::Fail(format!("no answer: {error}")),
    }
}

/// Any event of her log, to take a block from.
async fn any_event(ctx: &Ctx) -> Result<String, Verdict> {
    let events = her_events(ctx).await.map_err(Verdict::Fail)?;
    events
        .iter()
        .find_map(|event| event["id"].as_str().map(str::to_owned))
        .ok_or_else(|| Verdict::Skip("her log is empty".into()))
}

async fn refused_with(ctx: &Ctx, body: Value, status: u16, code: &str) -> Verdict {
    let answer = ctx
        .send_citizen(http::Method::POST, "Consent", patient(ctx), Some(body))
        .await;
    refused_as(ctx, &answer, status, code).await
}

/// A block taken from an event of her log, of `actor` in `whose` record, as a deny or (with
/// `permit`) a permit, answered `status` with `code`.
async fn block_refused(
    ctx: &Ctx,
    whose: Option<String>,
    actor: Value,
    permit: bool,
    (status, code): (u16, &str),
) -> Verdict {
    let event = match any_event(ctx).await {
        Ok(event) => event,
        Err(verdict) => return verdict,
    };
    let mut body = block_request(&whose.unwrap_or_default(), &event, actor);
    if permit {
        body["provision"]["type"] = json!("permit");
    }
    refused_with(ctx, body, status, code).await
}

async fn other_patients_block_refused(ctx: &Ctx) -> Verdict {
    let actor = json!({ "identifier": { "system": AUTHORISATION, "value": "NS363" } });
    let other = ctx.settings.other_patient.clone();
    block_refused(ctx, other, actor, false, (403, "citizen-block-refused")).await
}

async fn unnamed_actor_refused(ctx: &Ctx) -> Verdict {
    let actor = json!({ "reference": "Practitioner/portvagt-conformance-nobody" });
    let own = ctx.settings.own_patient.clone();
    block_refused(ctx, own, actor, false, (403, "citizen-block-refused")).await
}

async fn permit_refused(ctx: &Ctx) -> Verdict {
    let actor = json!({ "identifier": { "system": AUTHORISATION, "value": "NS363" } });
    let own = ctx.settings.own_patient.clone();
    block_refused(ctx, own, actor, true, (422, "citizen-block-invalid")).await
}

async fn no_replace_or_delete(ctx: &Ctx) -> Verdict {
    let own = ctx.settings.own_patient.clone().unwrap_or_default();
    let replaced = ctx
        .send_citizen(
            http::Method::PUT,
            "Consent/portvagt-conformance-block",
            patient(ctx),
            Some(json!({
                "resourceType": "Consent", "id": "portvagt-conformance-block", "status": "inactive",
                "patient": { "reference": format!("Patient/{own}") }
            })),
        )
        .await;
    let verdict = refused_as(ctx, &replaced, 403, "citizen-listener").await;
    if verdict != Verdict::Pass {
        return verdict;
    }
    let deleted = ctx
        .send_citizen(
            http::Method::DELETE,
            "Consent/portvagt-conformance-block",
            patient(ctx),
            None,
        )
        .await;
    refused_as(ctx, &deleted, 403, "citizen-listener").await
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
