//! What clients are told: OperationOutcomes for errors (FHIR R4 §3.1.0.4), the capability
//! statement and the SMART configuration (SMART App Launch 2.2 §2.1), request ids.

use super::{case, check, describe, expect_status};
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "ERR-01",
            "a 401 is an OperationOutcome in FHIR JSON",
            "FHIR R4 §3.1.0.4: errors as OperationOutcome",
            [],
            unauthorised_outcome
        ),
        case!(
            "ERR-02",
            "a 403 is an OperationOutcome with issue code forbidden",
            "FHIR R4 §3.1.0.4 and issue-type forbidden",
            [NarrowToken],
            forbidden_outcome
        ),
        case!(
            "ERR-03",
            "an unknown resource type is a 404 OperationOutcome",
            "FHIR R4 §3.1.0.4: unknown resource type",
            [UserToken],
            unknown_type
        ),
        case!(
            "ERR-04",
            "a malformed id is a 400 OperationOutcome",
            "FHIR R4 §2.24.0.1 id: [A-Za-z0-9\\-\\.]{1,64}",
            [UserToken],
            malformed_id
        ),
        case!(
            "ERR-05",
            "the CapabilityStatement describes SMART security",
            "SMART App Launch 2.2 §2.2: rest.security.service SMART-on-FHIR",
            [UserToken],
            capability_security
        ),
        case!(
            "ERR-06",
            "the SMART configuration is published",
            "SMART App Launch 2.2 §2.1: /.well-known/smart-configuration",
            [],
            smart_configuration
        ),
        case!(
            "ERR-07",
            "PKCE is S256 only",
            "SMART App Launch 2.2 §2.1: code_challenge_methods_supported includes S256, never plain",
            [],
            pkce
        ),
        case!(
            "ERR-08",
            "every answer carries a request id",
            "Portvagt: x-request-id on every answer, quoted in OperationOutcomes",
            [],
            request_id
        ),
        case!(
            "ERR-09",
            "_format=xml is answered in FHIR XML; a format the gateway cannot check is refused",
            "FHIR R4 §3.1.0.1.9 _format; the gateway decides on JSON and writes XML itself",
            [UserToken],
            xml_format
        ),
        case!(
            "ERR-10",
            "the 401 challenge names a realm",
            "RFC 6750 §3: realm in WWW-Authenticate",
            [],
            realm
        ),
        case!(
            "ERR-11",
            "a path outside the FHIR base is not served",
            "Portvagt: only the FHIR base and the documented endpoints",
            [UserToken],
            outside_base
        ),
        case!(
            "ERR-12",
            "a method FHIR does not define on a type is refused",
            "FHIR R4 §3.1.0: PATCH needs an id",
            [UserToken],
            bad_method
        ),
        case!(
            "ERR-13",
            "a POST _search body that is not a form is refused",
            "FHIR R4 §3.1.1.1: POST search takes application/x-www-form-urlencoded",
            [UserToken],
            search_body_not_form
        ),
    ]
}

async fn unauthorised_outcome(ctx: &Ctx) -> Verdict {
    match ctx.get("Patient?_count=1", None).await {
        Ok(answer) if answer.status == 401 => {
            let content_type = answer.header("content-type");
            check(
                answer.is_operation_outcome() && content_type.starts_with("application/fhir+json"),
                format!("401 body is not a FHIR JSON OperationOutcome ({content_type})"),
            )
        }
        other => expect_status(&other, 401),
    }
}

async fn forbidden_outcome(ctx: &Ctx) -> Verdict {
    match ctx
        .get("Patient?_count=1", ctx.settings.tokens.narrow.as_deref())
        .await
    {
        Ok(answer) if answer.status == 403 => check(
            answer
                .json()
                .pointer("/issue/0/code")
                .and_then(|c| c.as_str())
                == Some("forbidden"),
            format!("403 without issue code forbidden {}", describe(&answer)),
        ),
        other => expect_status(&other, 403),
    }
}

async fn unknown_type(ctx: &Ctx) -> Verdict {
    match ctx
        .get("Patinet/1", ctx.settings.tokens.user.as_deref())
        .await
    {
        Ok(answer) if answer.status == 404 => check(
            answer.is_operation_outcome(),
            "404 without an OperationOutcome",
        ),
        other => expect_status(&other, 404),
    }
}

async fn malformed_id(ctx: &Ctx) -> Verdict {
    match ctx
        .get("Patient/a$b", ctx.settings.tokens.user.as_deref())
        .await
    {
        Ok(answer) if answer.status == 400 => check(
            answer.is_operation_outcome(),
            "400 without an OperationOutcome",
        ),
        other => expect_status(&other, 400),
    }
}

async fn capability_security(ctx: &Ctx) -> Verdict {
    match ctx
        .get("metadata", ctx.settings.tokens.user.as_deref())
        .await
    {
        Ok(answer) if answer.status == 200 => {
            let body = answer.json();
            let services = body.pointer("/rest/0/security/service").cloned();
            check(
                body["resourceType"] == "CapabilityStatement"
                    && services.is_some_and(|s| s.to_string().contains("SMART-on-FHIR")),
                "rest.security.service does not name SMART-on-FHIR",
            )
        }
        other => expect_status(&other, 200),
    }
}

async fn smart_document(ctx: &Ctx) -> Result<serde_json::Value, Verdict> {
    match ctx.get(".well-known/smart-configuration", None).await {
        Ok(answer) if answer.status == 200 => Ok(answer.json()),
        other => Err(expect_status(&other, 200)),
    }
}

async fn smart_configuration(ctx: &Ctx) -> Verdict {
    match smart_document(ctx).await {
        Ok(document) => check(
            document["capabilities"].is_array() && document["issuer"].is_string(),
            "no issuer or capabilities in the SMART configuration",
        ),
        Err(verdict) => verdict,
    }
}

async fn pkce(ctx: &Ctx) -> Verdict {
    match smart_document(ctx).await {
        Ok(document) => {
            let methods = document["code_challenge_methods_supported"].to_string();
            check(
                methods.contains("S256") && !methods.contains("plain"),
                format!("code_challenge_methods_supported: {methods}"),
            )
        }
        Err(verdict) => verdict,
    }
}

async fn request_id(ctx: &Ctx) -> Verdict {
    match ctx.get("Patient?_count=1", None).await {
        Ok(answer) => check(
            answer.headers.contains_key("x-request-id"),
            "no x-request-id header",
        ),
        Err(error) => Verdict::Fail(format!("no answer: {error}")),
    }
}

async fn xml_format(ctx: &Ctx) -> Verdict {
    let token = ctx.settings.tokens.user.as_deref();
    let xml = match ctx.get("Patient?_count=1&_format=xml", token).await {
        Ok(answer) => answer,
        Err(error) => return Verdict::Fail(format!("no answer: {error}")),
    };
    let body = String::from_utf8_lossy(&xml.body);
    if xml.status != 200
        || !xml
            .header("content-type")
            .starts_with("application/fhir+xml")
        || !body.contains("<Bundle xmlns=\"http://hl7.org/fhir\">")
    {
        return Verdict::Fail(format!(
            "_format=xml: {} {} is no FHIR XML searchset",
            xml.status,
            xml.header("content-type")
        ));
    }
    match ctx.get("Patient?_count=1&_format=turtle", token).await {
        Ok(answer) => check(
            answer.status == 406,
            format!("_format=turtle answered {}, not 406", answer.status),
        ),
        Err(error) => Verdict::Fail(format!("no answer: {error}")),
    }
}

async fn realm(ctx: &Ctx) -> Verdict {
    match ctx.get("Patient?_count=1", None).await {
        Ok(answer) if answer.status == 401 => {
            let challenge = answer.header("www-authenticate");
            check(
                challenge.contains("realm="),
                format!("no realm: {challenge:?}"),
            )
        }
        other => expect_status(&other, 401),
    }
}

fn user_authorization(ctx: &Ctx) -> String {
    format!(
        "Bearer {}",
        ctx.settings.tokens.user.as_deref().unwrap_or_default()
    )
}

async fn outside_base(ctx: &Ctx) -> Verdict {
    let token = user_authorization(ctx);
    let answer = ctx
        .client
        .send(
            http::Method::GET,
            "/admin/config",
            &[("authorization", token.as_str())],
            None,
        )
        .await;
    match &answer {
        Ok(a) if a.status == 404 || a.status == 400 => {
            check(a.is_operation_outcome(), "no OperationOutcome")
        }
        _ => expect_status(&answer, 404),
    }
}

async fn bad_method(ctx: &Ctx) -> Verdict {
    let token = user_authorization(ctx);
    let answer = ctx
        .client
        .send(
            http::Method::PATCH,
            &ctx.path("Patient"),
            &[("authorization", token.as_str())],
            Some(("application/json-patch+json", b"[]".to_vec())),
        )
        .await;
    match &answer {
        Ok(a) if a.status == 405 || a.status == 400 => {
            check(a.is_operation_outcome(), "no OperationOutcome")
        }
        _ => expect_status(&answer, 405),
    }
}

async fn search_body_not_form(ctx: &Ctx) -> Verdict {
    let token = user_authorization(ctx);
    let answer = ctx
        .client
        .send(
            http::Method::POST,
            &ctx.path("Patient/_search"),
            &[("authorization", token.as_str())],
            Some(("application/json", br#"{"name":"Hansen"}"#.to_vec())),
        )
        .await;
    match &answer {
        Ok(a) if a.status == 415 || a.status == 400 => {
            check(a.is_operation_outcome(), "no OperationOutcome")
        }
        _ => expect_status(&answer, 415),
    }
}
