//! Scopes: SMART App Launch 2.2 §3 (v1 and v2 resource scopes). The narrow token has only
//! `user/Observation.rs`: everything else must be refused, including the ways searches reach
//! other types.

use http::Method;
use serde_json::json;

use super::{case, check, expect_status};
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "SCOPE-01",
            "user/Observation.rs searches Observations",
            "SMART App Launch 2.2 §3.3: `s` grants search",
            [NarrowToken],
            granted_search
        ),
        case!(
            "SCOPE-02",
            "user/Observation.rs cannot read a Patient",
            "SMART App Launch 2.2 §3.3: a scope covers its resource type only",
            [NarrowToken],
            other_type
        ),
        case!(
            "SCOPE-03",
            "user/Observation.rs cannot create",
            "SMART App Launch 2.2 §3.3: `c` is needed to create",
            [NarrowToken],
            create
        ),
        case!(
            "SCOPE-04",
            "user/Observation.rs cannot delete",
            "SMART App Launch 2.2 §3.3: `d` is needed to delete",
            [NarrowToken],
            delete
        ),
        case!(
            "SCOPE-05",
            "_include of another type is refused",
            "FHIR R4 §3.1.1.5.8 _include returns other types; the scope does not cover them",
            [NarrowToken],
            include
        ),
        case!(
            "SCOPE-06",
            "_revinclude of another type is refused",
            "FHIR R4 §3.1.1.5.8 _revinclude returns other types",
            [NarrowToken],
            revinclude
        ),
        case!(
            "SCOPE-07",
            "a chained search through another type is refused",
            "FHIR R4 §3.1.1.4.13 chaining tests another type's data",
            [NarrowToken],
            chained
        ),
        case!(
            "SCOPE-08",
            "_has through another type is refused",
            "FHIR R4 §3.1.1.4.14 _has tests another type's data",
            [NarrowToken],
            has
        ),
        case!(
            "SCOPE-09",
            "a system-level search for Patients is refused",
            "FHIR R4 §3.1.0.9 search across types; SMART scopes per type",
            [NarrowToken],
            system_search
        ),
        case!(
            "SCOPE-10",
            "system history is refused",
            "FHIR R4 §3.1.0.10 history across all types",
            [NarrowToken],
            system_history
        ),
        case!(
            "SCOPE-11",
            "a batch entry outside the scope is answered 403",
            "FHIR R4 §3.1.0.11 batch: every entry is authorised on its own",
            [NarrowToken],
            batch_entry
        ),
        case!(
            "SCOPE-12",
            "POST _search cannot smuggle _include in the body",
            "FHIR R4 §3.1.1.1 POST search: the form body is parameters too",
            [NarrowToken],
            post_search
        ),
        case!(
            "SCOPE-13",
            "a scope refusal names insufficient_scope",
            "RFC 6750 §3.1: error=\"insufficient_scope\" with 403",
            [NarrowToken],
            insufficient_scope
        ),
        case!(
            "SCOPE-14",
            "$everything needs a scope on every type",
            "FHIR R4 Patient/$everything returns every type in the compartment",
            [NarrowToken, PatientToken],
            everything
        ),
        case!(
            "SCOPE-15",
            "a v2 granular scope's answers stay within its restriction",
            "SMART App Launch 2.2 §3.6: finer-grained resource constraints",
            [GranularToken],
            granular
        ),
        case!(
            "SCOPE-16",
            "a v1 read scope reads and searches",
            "SMART App Launch 2.2 §3.5: v1 `.read` is `.rs`",
            [V1Token],
            v1_read
        ),
        case!(
            "SCOPE-17",
            "a v1 read scope cannot write",
            "SMART App Launch 2.2 §3.5: `.read` grants no write",
            [V1Token],
            v1_no_write
        ),
    ]
}

async fn granular(ctx: &Ctx) -> Verdict {
    match ctx
        .get(
            "Observation?_count=100",
            ctx.settings.tokens.granular.as_deref(),
        )
        .await
    {
        Ok(answer) if answer.status == 403 => Verdict::Pass,
        Ok(answer) if answer.status == 200 => {
            let body = answer.json();
            let outside = body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|entry| entry["resource"]["resourceType"] == "Observation")
                .filter(|entry| {
                    !entry["resource"]["category"]
                        .to_string()
                        .contains("laboratory")
                })
                .count();
            check(
                outside == 0,
                format!("{outside} Observations outside the restriction"),
            )
        }
        other => expect_status(&other, 200),
    }
}

async fn v1_read(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get("Observation?_count=1", ctx.settings.tokens.v1.as_deref())
            .await,
        200,
    )
}

async fn v1_no_write(ctx: &Ctx) -> Verdict {
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "conformance" } });
    expect_status(
        &ctx.send(
            Method::POST,
            "Observation",
            ctx.settings.tokens.v1.as_deref(),
            Some(observation),
        )
        .await,
        403,
    )
}

fn narrow(ctx: &Ctx) -> Option<&str> {
    ctx.settings.tokens.narrow.as_deref()
}

async fn granted_search(ctx: &Ctx) -> Verdict {
    expect_status(&ctx.get("Observation?_count=1", narrow(ctx)).await, 200)
}

async fn other_type(ctx: &Ctx) -> Verdict {
    expect_status(&ctx.get("Patient?_count=1", narrow(ctx)).await, 403)
}

async fn create(ctx: &Ctx) -> Verdict {
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "conformance" } });
    expect_status(
        &ctx.send(Method::POST, "Observation", narrow(ctx), Some(observation))
            .await,
        403,
    )
}

async fn delete(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.send(
            Method::DELETE,
            "Observation/conformance-no-such",
            narrow(ctx),
            None,
        )
        .await,
        403,
    )
}

async fn include(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get("Observation?_include=Observation:subject", narrow(ctx))
            .await,
        403,
    )
}

async fn revinclude(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get("Observation?_revinclude=Provenance:target", narrow(ctx))
            .await,
        403,
    )
}

async fn chained(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get("Observation?subject:Patient.name=Hansen", narrow(ctx))
            .await,
        403,
    )
}

async fn has(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get("Observation?_has:Condition:subject:code=E11", narrow(ctx))
            .await,
        403,
    )
}

async fn system_search(ctx: &Ctx) -> Verdict {
    expect_status(&ctx.get("?_type=Patient", narrow(ctx)).await, 403)
}

async fn system_history(ctx: &Ctx) -> Verdict {
    expect_status(&ctx.get("_history", narrow(ctx)).await, 403)
}

async fn batch_entry(ctx: &Ctx) -> Verdict {
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient?_count=1" } }
    ]});
    match ctx.send(Method::POST, "", narrow(ctx), Some(batch)).await {
        Ok(answer) if answer.status == 403 => Verdict::Pass,
        Ok(answer) if answer.status == 200 => {
            let body = answer.json();
            let status = body["entry"][0]["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            check(
                status.starts_with("403")
                    && body["entry"][0]["resource"]["resourceType"] != "Bundle",
                format!("the Patient entry was answered {status:?}"),
            )
        }
        other => expect_status(&other, 200),
    }
}

async fn post_search(ctx: &Ctx) -> Verdict {
    let token = format!("Bearer {}", narrow(ctx).unwrap_or_default());
    let answer = ctx
        .client
        .send(
            Method::POST,
            &ctx.path("Observation/_search"),
            &[("authorization", token.as_str())],
            Some((
                "application/x-www-form-urlencoded",
                b"_include=Observation:subject".to_vec(),
            )),
        )
        .await;
    expect_status(&answer, 403)
}

async fn insufficient_scope(ctx: &Ctx) -> Verdict {
    match ctx.get("Patient?_count=1", narrow(ctx)).await {
        Ok(answer) if answer.status == 403 => {
            let challenge = answer.header("www-authenticate");
            check(
                challenge.contains("insufficient_scope"),
                format!("403 without insufficient_scope: {challenge:?}"),
            )
        }
        other => expect_status(&other, 403),
    }
}

async fn everything(ctx: &Ctx) -> Verdict {
    let patient = ctx.settings.own_patient.as_deref().unwrap_or_default();
    expect_status(
        &ctx.get(&format!("Patient/{patient}/$everything"), narrow(ctx))
            .await,
        403,
    )
}
