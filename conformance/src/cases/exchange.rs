//! SAML token exchange (RFC 8693 and the OIO IDWS REST `saml-token=` form): a SOSI ID card for
//! the suite's client certificate is exchanged once, the token works, a replay does not.

use base64::Engine as _;
use http::Method;

use super::{case, check, describe, expect_one_of, expect_status};
use crate::{Case, Ctx, Verdict};

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "XCHG-01",
            "a SOSI ID card is exchanged for a token",
            "RFC 8693 §2.2 and OIO IDWS REST: access_token, token_type, expires_in",
            [SosiCard],
            exchange
        ),
        case!(
            "XCHG-02",
            "the same card is refused the second time",
            "SAML profiles §4.1.4.5: one use per assertion",
            [SosiCard],
            replay
        ),
        case!(
            "XCHG-03",
            "a garbage assertion is refused with invalid_grant",
            "RFC 6749 §5.2: invalid_grant",
            [],
            garbage
        ),
        case!(
            "XCHG-04",
            "the token endpoint takes POST only",
            "RFC 6749 §3.2: the token endpoint uses POST",
            [],
            get_refused
        ),
    ]
}

fn form(ctx: &Ctx) -> String {
    let card = ctx.settings.sosi_card.as_deref().unwrap_or_default();
    let encoded = base64::engine::general_purpose::STANDARD.encode(card);
    let escaped: String = encoded
        .chars()
        .map(|c| match c {
            '+' => "%2B".to_owned(),
            '/' => "%2F".to_owned(),
            '=' => "%3D".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!("saml-token={escaped}")
}

async fn post(ctx: &Ctx, body: String) -> Result<crate::client::Answer, String> {
    ctx.client
        .send(
            Method::POST,
            "/token",
            &[],
            Some(("application/x-www-form-urlencoded", body.into_bytes())),
        )
        .await
}

async fn exchange(ctx: &Ctx) -> Verdict {
    match post(ctx, form(ctx)).await {
        Ok(answer) if answer.status == 200 => {
            let body = answer.json();
            let token = body["access_token"].as_str().unwrap_or_default().to_owned();
            let shaped = body["token_type"].is_string()
                && body["expires_in"].as_u64().is_some_and(|s| s <= 3600);
            if !shaped || token.is_empty() {
                return Verdict::Fail(format!("not a token answer: {body}"));
            }
            let read = ctx.get("metadata", Some(&token)).await;
            match read {
                Ok(read) if read.status == 401 => Verdict::Fail(format!(
                    "the exchanged token is not accepted {}",
                    describe(&read)
                )),
                Ok(_) => Verdict::Pass,
                Err(error) => Verdict::Fail(format!("no answer: {error}")),
            }
        }
        other => expect_status(&other, 200),
    }
}

async fn replay(ctx: &Ctx) -> Verdict {
    match post(ctx, form(ctx)).await {
        Ok(answer) if answer.status == 400 => check(
            answer.json()["error"] == "invalid_grant",
            format!("error is {}", answer.json()["error"]),
        ),
        other => expect_status(&other, 400),
    }
}

async fn garbage(ctx: &Ctx) -> Verdict {
    match post(ctx, "saml-token=bm90IGEgY2FyZA".to_owned()).await {
        Ok(answer) if answer.status == 400 => check(
            answer.json()["error"] == "invalid_grant",
            format!("error is {}", answer.json()["error"]),
        ),
        other => expect_one_of(&other, &[400]),
    }
}

async fn get_refused(ctx: &Ctx) -> Verdict {
    let answer = ctx.client.send(Method::GET, "/token", &[], None).await;
    expect_one_of(&answer, &[404, 405])
}
