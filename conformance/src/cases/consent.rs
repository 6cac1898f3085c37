//! Negative consent and break-the-glass (the Danish "værdispring"): a professional a citizen has
//! blocked is refused that citizen's data, also inside searches; purpose EMERGENCY lifts the
//! block only with a reason, and the access log marks it.

use std::time::Duration;

use super::{all_refused, case, check, entry_patients, expect_status};
use crate::{Case, Ctx, Verdict};

/// The header that carries a break-the-glass reason.
const REASON_HEADER: &str = "x-portvagt-break-glass-reason";

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "CONSENT-01",
            "a blocked professional cannot read the patient",
            "Negative consent: a block against a named professional (dk-security: consent)",
            [ConsentBlock],
            blocked_read
        ),
        case!(
            "CONSENT-02",
            "a blocked professional's search leaves the patient out",
            "Negative consent applies to search results too",
            [ConsentBlock],
            blocked_search
        ),
        case!(
            "CONSENT-03",
            "EMERGENCY without a reason does not lift the block",
            "Break-the-glass needs a stated reason",
            [ConsentBlock],
            emergency_without_reason
        ),
        case!(
            "CONSENT-04",
            "EMERGENCY with a reason lifts the block",
            "Break-the-glass: purpose EMERGENCY with a reason overrides a negative consent",
            [ConsentBlock],
            emergency_with_reason
        ),
        case!(
            "CONSENT-06",
            "a blocked professional is refused however the patient is spelled",
            "Negative consent holds for every reference spelling a FHIR server resolves (R4 §3.1.1.4.9)",
            [ConsentBlock],
            blocked_in_every_spelling
        ),
        case!(
            "CONSENT-07",
            "a count that names no patient is refused while blocks are enforced",
            "Nothing reveals what a block withholds: counts, totals",
            [ConsentBlock],
            unpinned_count_refused
        ),
        case!(
            "CONSENT-08",
            "a blocked professional's search answer carries no total and no notice",
            "Nothing reveals what a block withholds: the answer is as if the data did not exist",
            [ConsentBlock],
            no_total_no_notice
        ),
        case!(
            "CONSENT-05",
            "the patient's log marks the break-the-glass access with its reason",
            "IHE BALP purposeOfEvent BTG; the citizen sees it (MinLog)",
            [ConsentBlock],
            marked_in_log
        ),
    ]
}

fn patient(ctx: &Ctx) -> &str {
    ctx.settings.blocked_patient.as_deref().unwrap_or_default()
}

async fn read_with(
    ctx: &Ctx,
    token: Option<&str>,
    reason: Option<&str>,
) -> Result<crate::client::Answer, String> {
    let authorization = format!("Bearer {}", token.unwrap_or_default());
    let mut headers = vec![("authorization", authorization.as_str())];
    if let Some(reason) = reason {
        headers.push((REASON_HEADER, reason));
    }
    ctx.client
        .send(
            http::Method::GET,
            &ctx.path(&format!("Patient/{}", patient(ctx))),
            &headers,
            None,
        )
        .await
}

async fn blocked_read(ctx: &Ctx) -> Verdict {
    expect_status(
        &read_with(ctx, ctx.settings.tokens.blocked.as_deref(), None).await,
        403,
    )
}

/// The blocked professional's search across patients, judged by `judge` when answered 200.
async fn blocked_search_with(
    ctx: &Ctx,
    judge: impl FnOnce(serde_json::Value) -> Verdict,
) -> Verdict {
    match ctx
        .get(
            "Observation?_count=100",
            ctx.settings.tokens.blocked.as_deref(),
        )
        .await
    {
        Ok(answer) if answer.status == 200 => judge(answer.json()),
        other => expect_status(&other, 200),
    }
}

async fn blocked_search(ctx: &Ctx) -> Verdict {
    blocked_search_with(ctx, |body| {
        let patients = entry_patients(&body);
        check(
            !patients.iter().any(|p| p == patient(ctx)),
            format!("the blocking patient's data came back: {patients:?}"),
        )
    })
    .await
}

async fn blocked_in_every_spelling(ctx: &Ctx) -> Verdict {
    let id = patient(ctx);
    let token = ctx.settings.tokens.blocked.as_deref();
    let queries = [
        format!("Observation?subject={id}&_summary=count"),
        format!("Observation?subject:Patient={id}&_count=0"),
        format!("Observation?patient={id}"),
        format!("Observation?subject=https%3A%2F%2Felsewhere.example%2Ffhir%2FPatient%2F{id}"),
        format!("Observation?subject=Patient%2F{id}%2F_history%2F1"),
    ];
    all_refused(ctx, token, &queries).await
}

async fn unpinned_count_refused(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(
            "Observation?_summary=count",
            ctx.settings.tokens.blocked.as_deref(),
        )
        .await;
    expect_status(&answer, 403)
}

async fn no_total_no_notice(ctx: &Ctx) -> Verdict {
    blocked_search_with(ctx, |body| {
        let notice = body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entry| entry["search"]["mode"] == "outcome");
        check(
            body.get("total").is_none() && !notice,
            "the answer carries a total or a notice that depends on what is withheld",
        )
    })
    .await
}

async fn emergency_without_reason(ctx: &Ctx) -> Verdict {
    expect_status(
        &read_with(ctx, ctx.settings.tokens.emergency.as_deref(), None).await,
        403,
    )
}

async fn emergency_with_reason(ctx: &Ctx) -> Verdict {
    expect_status(
        &read_with(
            ctx,
            ctx.settings.tokens.emergency.as_deref(),
            Some("conformance: unconscious, no relatives reachable"),
        )
        .await,
        200,
    )
}

async fn marked_in_log(ctx: &Ctx) -> Verdict {
    let reason = "conformance: marked in the log";
    let _ = read_with(ctx, ctx.settings.tokens.emergency.as_deref(), Some(reason)).await;
    // Read the log as the audit repository serves it to the patient: only their token can, so
    // this needs the patient token to be for the blocking patient; else the repository search
    // by the user is refused and the mark is checked in what the patient token sees.
    let Some(citizen) = ctx.settings.tokens.patient.as_deref() else {
        return Verdict::Skip("no patient token to read the log with".into());
    };
    if ctx.settings.own_patient.as_deref() != Some(patient(ctx)) {
        return Verdict::Skip("the patient token is not the blocking patient's".into());
    }
    for _ in 0..60 {
        if let Ok(answer) = ctx.get("AuditEvent?_count=200", Some(citizen)).await
            && answer.status == 200
            && answer
                .body
                .windows(reason.len())
                .any(|w| w == reason.as_bytes())
        {
            return Verdict::Pass;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Verdict::Fail("no AuditEvent with the break-the-glass reason reached the patient's log".into())
}
