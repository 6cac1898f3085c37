//! The treatment relationship ("aktuel behandlingsrelation") and værdispring: a professional
//! bound by the check reads a patient she treats, is refused one she does not in every spelling
//! of the patient, finds nothing of that patient in searches (no total, no count), and gets
//! through only by værdispring: purpose EMERGENCY with a reason, for look-ups, never writes.

use super::{all_refused, case, check, entry_patients, expect_status};
use crate::{Case, Ctx, Verdict};

/// The header that carries a break-the-glass (værdispring) reason.
const REASON_HEADER: &str = "x-portvagt-break-glass-reason";

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "RELATION-01",
            "a professional reads a patient she has a treatment relationship with",
            "Danish health law: access with a current treatment relationship (dk-security: BRS)",
            [Relationship],
            related_read
        ),
        case!(
            "RELATION-02",
            "a professional without a treatment relationship is refused the patient",
            "Without a current treatment relationship, only værdispring (dk-security: BRS)",
            [Relationship],
            unrelated_read
        ),
        case!(
            "RELATION-03",
            "the refusal holds however the patient is spelled",
            "Every reference spelling a FHIR server resolves (R4 §3.1.1.4.9), identifiers, compartments",
            [Relationship],
            unrelated_in_every_spelling
        ),
        case!(
            "RELATION-04",
            "a search that names nobody leaves the unrelated patient out, with no total",
            "Nothing reveals the data of a patient without a relationship: entries, totals",
            [Relationship],
            unrelated_left_out
        ),
        case!(
            "RELATION-05",
            "a count that names nobody is refused for a professional bound by the check",
            "Nothing reveals the data of a patient without a relationship: counts",
            [Relationship],
            unpinned_count_refused
        ),
        case!(
            "RELATION-06",
            "EMERGENCY without a reason is no værdispring",
            "Værdispring needs a stated reason, which is followed up",
            [Relationship],
            emergency_without_reason
        ),
        case!(
            "RELATION-07",
            "værdispring (EMERGENCY with a reason) lets a look-up through",
            "Værdispring: access without a relationship, with a reason, followed up",
            [Relationship],
            vaerdispring_read
        ),
        case!(
            "RELATION-08",
            "værdispring never lets a write into the unrelated patient's record",
            "A write could make the evidence that ends the follow-up",
            [Relationship],
            vaerdispring_write_refused
        ),
    ]
}

fn related(ctx: &Ctx) -> &str {
    ctx.settings.related_patient.as_deref().unwrap_or_default()
}

fn unrelated(ctx: &Ctx) -> &str {
    ctx.settings
        .unrelated_patient
        .as_deref()
        .unwrap_or_default()
}

fn bound(ctx: &Ctx) -> Option<&str> {
    ctx.settings.tokens.bound.as_deref()
}

/// `method path` with the bound professional's EMERGENCY token and `reason`.
async fn emergency(
    ctx: &Ctx,
    method: http::Method,
    path: &str,
    reason: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<crate::client::Answer, String> {
    let authorization = format!(
        "Bearer {}",
        ctx.settings
            .tokens
            .bound_emergency
            .as_deref()
            .unwrap_or_default()
    );
    let mut headers = vec![("authorization", authorization.as_str())];
    if let Some(reason) = reason {
        headers.push((REASON_HEADER, reason));
    }
    let body = body.map(|body| ("application/fhir+json", body.to_string().into_bytes()));
    ctx.client
        .send(method, &ctx.path(path), &headers, body)
        .await
}

async fn related_read(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}", related(ctx)), bound(ctx))
            .await,
        200,
    )
}

async fn unrelated_read(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(&format!("Patient/{}", unrelated(ctx)), bound(ctx))
        .await;
    match expect_status(&answer, 403) {
        Verdict::Pass => {
            let code = answer.map(|a| a.detail_code()).unwrap_or_default();
            check(
                code == "relationship-required",
                format!("refused, but as {code:?}, not relationship-required"),
            )
        }
        other => other,
    }
}

async fn unrelated_in_every_spelling(ctx: &Ctx) -> Verdict {
    let id = unrelated(ctx);
    let queries = [
        format!("Observation?patient={id}"),
        format!("Observation?subject:Patient={id}"),
        format!("Observation?subject=Patient%2F{id}"),
        format!("Observation?subject=https%3A%2F%2Felsewhere.example%2Ffhir%2FPatient%2F{id}"),
        format!("Observation?subject=Patient%2F{id}%2F_history%2F1"),
        format!("Patient?_id={id}"),
        format!("Patient/{id}/Observation"),
        format!("Patient/{id}/$everything"),
    ];
    all_refused(ctx, bound(ctx), &queries).await
}

async fn unrelated_left_out(ctx: &Ctx) -> Verdict {
    match ctx.get("Observation?_count=200", bound(ctx)).await {
        Ok(answer) if answer.status == 200 => {
            let body = answer.json();
            let patients = entry_patients(&body);
            if patients.iter().any(|p| p == unrelated(ctx)) {
                return Verdict::Fail(format!(
                    "the unrelated patient's data came back: {patients:?}"
                ));
            }
            check(
                body.get("total").is_none(),
                "the answer carries a total that counts what is left out",
            )
        }
        other => expect_status(&other, 200),
    }
}

async fn unpinned_count_refused(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get("Observation?_summary=count", bound(ctx)).await,
        403,
    )
}

/// The bound professional's EMERGENCY read of the unrelated patient, with `reason`: answered
/// `expected`.
async fn emergency_read(ctx: &Ctx, reason: Option<&str>, expected: u16) -> Verdict {
    let path = format!("Patient/{}", unrelated(ctx));
    expect_status(
        &emergency(ctx, http::Method::GET, &path, reason, None).await,
        expected,
    )
}

async fn emergency_without_reason(ctx: &Ctx) -> Verdict {
    emergency_read(ctx, None, 403).await
}

async fn vaerdispring_read(ctx: &Ctx) -> Verdict {
    emergency_read(ctx, Some("conformance: indlagt akut, kan ikke svare"), 200).await
}

async fn vaerdispring_write_refused(ctx: &Ctx) -> Verdict {
    let observation = serde_json::json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "conformance" },
        "subject": { "reference": format!("Patient/{}", unrelated(ctx)) },
    });
    expect_status(
        &emergency(
            ctx,
            http::Method::POST,
            "Observation",
            Some("conformance: indlagt akut"),
            Some(observation),
        )
        .await,
        403,
    )
}
