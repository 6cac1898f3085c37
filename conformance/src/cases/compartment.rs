//! The patient compartment: a patient-context token (SMART App Launch 2.2 §3, `patient/`
//! scopes with a `patient` claim) reaches that patient's data and nobody else's, however the
//! request is written. The bypasses other gateways fell for are here too.

use http::Method;
use serde_json::json;

use super::{case, check, describe, entry_patients, expect_one_of, expect_status};
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "PAT-01",
            "the patient reads their own Patient",
            "SMART App Launch 2.2 §3: patient/ scopes reach the patient in context",
            [PatientToken],
            own_patient
        ),
        case!(
            "PAT-02",
            "the patient cannot read another Patient",
            "SMART App Launch 2.2 §3 and FHIR R4 CompartmentDefinition patient",
            [PatientToken],
            other_patient
        ),
        case!(
            "PAT-03",
            "a search for another patient's Observations is refused",
            "FHIR R4 CompartmentDefinition patient: Observation.subject",
            [PatientToken],
            other_search
        ),
        case!(
            "PAT-04",
            "an unpinned search returns only the patient's own data",
            "SMART App Launch 2.2 §3: results limited to the compartment",
            [PatientToken],
            unpinned_search
        ),
        case!(
            "PAT-05",
            "the patient's own $everything",
            "FHIR R4 Patient/$everything within the compartment",
            [PatientToken],
            own_everything
        ),
        case!(
            "PAT-06",
            "another patient's $everything is refused",
            "FHIR R4 Patient/$everything; compartment",
            [PatientToken],
            other_everything
        ),
        case!(
            "PAT-07",
            "another patient's history is refused",
            "FHIR R4 §3.1.0.10 history; compartment",
            [PatientToken],
            other_history
        ),
        case!(
            "PAT-08",
            "a search naming both patients is refused",
            "FHIR R4 §3.1.1.5.3 OR values; every value must be in the compartment",
            [PatientToken],
            or_list
        ),
        case!(
            "PAT-09",
            "subject=Patient/other is refused",
            "FHIR R4 Observation.subject reference search",
            [PatientToken],
            subject_reference
        ),
        case!(
            "PAT-10",
            "conflicting patient parameters are refused",
            "Portvagt: one reading of a request; repeated pins must agree",
            [PatientToken],
            conflicting
        ),
        case!(
            "PAT-11",
            "POST _search cannot name another patient in the body",
            "FHIR R4 §3.1.1.1 POST search parameters",
            [PatientToken],
            post_search
        ),
        case!(
            "PAT-12",
            "a lower-case type does not reach another patient",
            "FHIR R4 §3.1.0: type names are case-sensitive (node-fhir-server-core #18)",
            [PatientToken],
            lower_case
        ),
        case!(
            "PAT-13",
            "a dot segment is refused",
            "RFC 3986 §5.2.4: no ../ reading of a path",
            [PatientToken],
            dot_segment
        ),
        case!(
            "PAT-14",
            "an encoded slash is refused",
            "RFC 3986 §2.2: %2F is not a segment separator",
            [PatientToken],
            encoded_slash
        ),
        case!(
            "PAT-15",
            "_method=DELETE on a GET is refused",
            "Portvagt: no method override through parameters",
            [PatientToken],
            method_parameter
        ),
        case!(
            "PAT-16",
            "X-HTTP-Method-Override is ignored",
            "Portvagt: no method override through headers",
            [PatientToken],
            method_header
        ),
        case!(
            "PAT-17",
            "_include of another patient's resources is not returned",
            "FHIR R4 §3.1.1.5.8 _include; compartment",
            [PatientToken],
            include_other
        ),
        case!(
            "PAT-18",
            "the patient cannot create data about another patient",
            "SMART App Launch 2.2 §3: writes stay in the compartment",
            [PatientToken],
            create_for_other
        ),
        case!(
            "PAT-19",
            "_revinclude does not bring in another patient's data",
            "FHIR R4 §3.1.1.5.8 _revinclude; compartment",
            [PatientToken],
            revinclude_other
        ),
        case!(
            "PAT-20",
            "a batch answers each entry on its own: own read 200, other's 403",
            "FHIR R4 §3.1.0.11 batch; compartment per entry",
            [PatientToken],
            batch_entries
        ),
        case!(
            "PAT-21",
            "a transaction reaching another patient is refused",
            "FHIR R4 §3.1.0.11 transaction: all or nothing",
            [PatientToken],
            transaction_other
        ),
        case!(
            "PAT-22",
            "_id search for another Patient returns nothing of theirs",
            "FHIR R4 §3.1.1.5.1 _id; compartment",
            [PatientToken],
            id_search
        ),
        case!(
            "PAT-23",
            "a vread of another Patient is refused",
            "FHIR R4 §3.1.0.3 vread; compartment",
            [PatientToken],
            vread_other
        ),
        case!(
            "PAT-24",
            "another patient's resource by id is answered as a missing one",
            "Portvagt: no oracle; whether another patient's id exists is not the patient's to learn",
            [UserToken, PatientToken],
            other_resource_looks_missing
        ),
    ]
}

fn token(ctx: &Ctx) -> Option<&str> {
    ctx.settings.tokens.patient.as_deref()
}

fn own(ctx: &Ctx) -> &str {
    ctx.settings.own_patient.as_deref().unwrap_or_default()
}

fn other(ctx: &Ctx) -> &str {
    ctx.settings.other_patient.as_deref().unwrap_or_default()
}

/// Refused, or answered with nothing of the other patient.
fn refused_or_without_other(ctx: &Ctx, answer: &Result<crate::client::Answer, String>) -> Verdict {
    match answer {
        Ok(a) if a.status == 403 || a.status == 400 => Verdict::Pass,
        Ok(a) if a.status == 200 => {
            let patients = entry_patients(&a.json());
            check(
                !patients.iter().any(|p| p == other(ctx)),
                format!("the answer holds {}'s data", other(ctx)),
            )
        }
        Ok(a) => Verdict::Fail(format!("unexpected {} {}", a.status, describe(a))),
        Err(error) => Verdict::Fail(format!("no answer: {error}")),
    }
}

async fn own_patient(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}", own(ctx)), token(ctx)).await,
        200,
    )
}

async fn other_patient(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}", other(ctx)), token(ctx))
            .await,
        403,
    )
}

async fn other_search(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Observation?patient={}", other(ctx)), token(ctx))
            .await,
        403,
    )
}

async fn unpinned_search(ctx: &Ctx) -> Verdict {
    match ctx.get("Observation?_count=100", token(ctx)).await {
        Ok(answer) if answer.status == 200 => {
            let patients = entry_patients(&answer.json());
            check(
                patients.iter().all(|p| p == own(ctx)),
                format!("results about others: {patients:?}"),
            )
        }
        other => expect_one_of(&other, &[200]),
    }
}

async fn own_everything(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}/$everything", own(ctx)), token(ctx))
            .await,
        200,
    )
}

async fn other_everything(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}/$everything", other(ctx)), token(ctx))
            .await,
        403,
    )
}

async fn other_history(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}/_history", other(ctx)), token(ctx))
            .await,
        403,
    )
}

async fn or_list(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(
            &format!("Observation?patient={},{}", own(ctx), other(ctx)),
            token(ctx),
        )
        .await;
    refused_or_without_other(ctx, &answer)
}

async fn subject_reference(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(
            &format!("Observation?subject=Patient/{}", other(ctx)),
            token(ctx),
        )
        .await,
        403,
    )
}

async fn conflicting(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(
            &format!("Observation?patient={}&patient={}", own(ctx), other(ctx)),
            token(ctx),
        )
        .await;
    expect_one_of(&answer, &[400, 403])
}

async fn post_search(ctx: &Ctx) -> Verdict {
    let authorization = format!("Bearer {}", token(ctx).unwrap_or_default());
    let answer = ctx
        .client
        .send(
            Method::POST,
            &ctx.path("Observation/_search"),
            &[("authorization", authorization.as_str())],
            Some((
                "application/x-www-form-urlencoded",
                format!("patient={}", other(ctx)).into_bytes(),
            )),
        )
        .await;
    expect_status(&answer, 403)
}

async fn lower_case(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(&format!("patient/{}", other(ctx)), token(ctx))
        .await;
    expect_one_of(&answer, &[400, 403, 404])
}

async fn dot_segment(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(
            &format!("Patient/{}/../{}", own(ctx), other(ctx)),
            token(ctx),
        )
        .await;
    expect_one_of(&answer, &[400, 403, 404])
}

async fn encoded_slash(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(&format!("Patient%2F{}", other(ctx)), token(ctx))
        .await;
    expect_one_of(&answer, &[400, 403, 404])
}

async fn method_parameter(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(&format!("Patient/{}?_method=DELETE", own(ctx)), token(ctx))
        .await;
    expect_one_of(&answer, &[400, 403])
}

async fn method_header(ctx: &Ctx) -> Verdict {
    let authorization = format!("Bearer {}", token(ctx).unwrap_or_default());
    let answer = ctx
        .client
        .send(
            Method::GET,
            &ctx.path(&format!("Patient/{}", own(ctx))),
            &[
                ("authorization", authorization.as_str()),
                ("x-http-method-override", "DELETE"),
            ],
            None,
        )
        .await;
    let first = expect_status(&answer, 200);
    if first != Verdict::Pass {
        return first;
    }
    // Still there: the override did not turn the read into a delete.
    expect_status(
        &ctx.get(&format!("Patient/{}", own(ctx)), token(ctx)).await,
        200,
    )
}

async fn include_other(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(
            &format!(
                "Observation?patient={}&_include=Observation:subject",
                own(ctx)
            ),
            token(ctx),
        )
        .await;
    refused_or_without_other(ctx, &answer)
}

async fn create_for_other(ctx: &Ctx) -> Verdict {
    let observation = json!({
        "resourceType": "Observation", "status": "final", "code": { "text": "conformance" },
        "subject": { "reference": format!("Patient/{}", other(ctx)) }
    });
    expect_status(
        &ctx.send(Method::POST, "Observation", token(ctx), Some(observation))
            .await,
        403,
    )
}

async fn revinclude_other(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(
            &format!("Patient?_id={}&_revinclude=Observation:subject", own(ctx)),
            token(ctx),
        )
        .await;
    refused_or_without_other(ctx, &answer)
}

async fn batch_entries(ctx: &Ctx) -> Verdict {
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": format!("Patient/{}", own(ctx)) } },
        { "request": { "method": "GET", "url": format!("Patient/{}", other(ctx)) } }
    ]});
    match ctx.send(Method::POST, "", token(ctx), Some(batch)).await {
        Ok(answer) if answer.status == 200 => {
            let body = answer.json();
            let status = |index: usize| {
                body["entry"][index]["response"]["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            let (first, second) = (status(0), status(1));
            check(
                first.starts_with("200") && second.starts_with("403"),
                format!("entries answered {first:?} and {second:?}"),
            )
        }
        other => expect_status(&other, 200),
    }
}

async fn transaction_other(ctx: &Ctx) -> Verdict {
    let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "request": { "method": "GET", "url": format!("Patient/{}", other(ctx)) } }
    ]});
    match ctx
        .send(Method::POST, "", token(ctx), Some(transaction))
        .await
    {
        Ok(answer) if answer.status == 403 || answer.status == 400 => Verdict::Pass,
        Ok(answer) if answer.status == 200 => check(
            !answer.json()["entry"]
                .to_string()
                .contains(&format!("\"id\":\"{}\"", other(ctx))),
            "the other patient's record came back",
        ),
        other => expect_one_of(&other, &[400, 403]),
    }
}

async fn id_search(ctx: &Ctx) -> Verdict {
    let answer = ctx
        .get(&format!("Patient?_id={}", other(ctx)), token(ctx))
        .await;
    refused_or_without_other(ctx, &answer)
}

async fn vread_other(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(&format!("Patient/{}/_history/1", other(ctx)), token(ctx))
            .await,
        403,
    )
}

async fn other_resource_looks_missing(ctx: &Ctx) -> Verdict {
    // One of the other patient's Observations, found with the user token.
    let found = ctx
        .get(
            &format!("Observation?subject=Patient/{}&_count=1", other(ctx)),
            ctx.settings.tokens.user.as_deref(),
        )
        .await;
    let id = match &found {
        Ok(answer) if answer.status == 200 => answer.json()["entry"][0]["resource"]["id"]
            .as_str()
            .map(str::to_owned),
        _ => None,
    };
    let Some(id) = id else {
        return Verdict::Skip(format!(
            "the other patient ({}) has no Observation the user token can find",
            other(ctx)
        ));
    };
    let theirs = ctx.get(&format!("Observation/{id}"), token(ctx)).await;
    let missing = ctx
        .get(&format!("Observation/{}", uuid::Uuid::new_v4()), token(ctx))
        .await;
    match (theirs, missing) {
        (Ok(theirs), Ok(missing)) => check(
            theirs.status == missing.status
                && [403, 404].contains(&theirs.status.as_u16())
                && theirs.detail_code() == missing.detail_code(),
            format!(
                "another patient's Observation answered {} {}, a missing one {} {}",
                theirs.status,
                theirs.detail_code(),
                missing.status,
                missing.detail_code()
            ),
        ),
        (Err(error), _) | (_, Err(error)) => Verdict::Fail(format!("no answer: {error}")),
    }
}
