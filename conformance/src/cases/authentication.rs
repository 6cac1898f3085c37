//! Authentication: bearer tokens as RFC 6750 and RFC 7519 (with RFC 8725's advice) want them,
//! certificate-bound as RFC 8705 wants them.

use super::{
    altered_payload, altered_signature, case, check, describe, expect_one_of, expect_status,
    unsigned,
};
use crate::{Case, Ctx, Verdict};

const SEARCH: &str = "Patient?_count=1";

pub(super) fn cases() -> Vec<Case> {
    vec![
        case!(
            "AUTH-01",
            "the user token is accepted",
            "SMART App Launch 2.2 §5: a valid access token gets access (RFC 6750 §2.1)",
            [UserToken],
            valid_token
        ),
        case!(
            "AUTH-02",
            "no token: 401 with a Bearer challenge",
            "RFC 6750 §3: WWW-Authenticate: Bearer on a request without credentials",
            [],
            missing_token
        ),
        case!(
            "AUTH-03",
            "a malformed token: 401 invalid_token",
            "RFC 6750 §3.1: error=\"invalid_token\" for a malformed token",
            [],
            malformed_token
        ),
        case!(
            "AUTH-04",
            "alg none is refused",
            "RFC 8725 §3.1 and §2.1: never accept unsigned tokens",
            [UserToken],
            alg_none
        ),
        case!(
            "AUTH-05",
            "an altered signature is refused",
            "RFC 7515 §5.2: the signature must verify",
            [UserToken],
            bad_signature
        ),
        case!(
            "AUTH-06",
            "an altered payload (wider scope) is refused",
            "RFC 7515 §5.2: a changed payload breaks the signature",
            [UserToken],
            tampered_payload
        ),
        case!(
            "AUTH-07",
            "an expired token is refused",
            "RFC 7519 §4.1.4: exp",
            [ExpiredToken],
            expired
        ),
        case!(
            "AUTH-08",
            "a token for another audience is refused",
            "RFC 7519 §4.1.3 and RFC 8707: aud must name this resource server",
            [WrongAudienceToken],
            wrong_audience
        ),
        case!(
            "AUTH-09",
            "the Basic scheme is refused",
            "RFC 6750 §2.1: only Bearer (or Holder-of-key) credentials",
            [UserToken],
            basic_scheme
        ),
        case!(
            "AUTH-10",
            "a token in the query string is not accepted",
            "RFC 6750 §2.3 and §5.3: URI query tokens are not to be used",
            [UserToken],
            query_token
        ),
        case!(
            "AUTH-11",
            "a certificate-bound token is refused on another certificate",
            "RFC 8705 §3: cnf.x5t#S256 must match the TLS client certificate",
            [UserToken, OtherCertificate],
            other_certificate
        ),
        case!(
            "AUTH-12",
            "two Authorization headers are refused",
            "RFC 9110 §11.6.2: one credentials field; ambiguity is refused",
            [UserToken],
            two_headers
        ),
        case!(
            "AUTH-13",
            "a bound token is accepted with the Holder-of-key scheme",
            "OIO IDWS REST: Authorization: Holder-of-key, certificate re-checked",
            [UserToken],
            holder_of_key
        ),
        case!(
            "AUTH-14",
            "the DPoP scheme is refused (no proof is checked)",
            "RFC 9449 §7.1: a DPoP token must not be taken as a bearer token",
            [UserToken],
            dpop
        ),
        case!(
            "AUTH-15",
            "an unknown opaque token is refused",
            "RFC 7662 §2.2: an inactive or unknown token gets no access",
            [],
            opaque
        ),
        case!(
            "AUTH-16",
            "a token with an extra part is refused",
            "RFC 7519 §7.2: a JWS has exactly three parts",
            [UserToken],
            extra_part
        ),
        case!(
            "AUTH-17",
            "a token that gives a claim twice is refused",
            "RFC 7519 §4: claim names must be unique; parsers differ on which of two counts (a binding, then `cnf: null`)",
            [DuplicateMemberToken],
            duplicate_member
        ),
        case!(
            "AUTH-18",
            "a token naming a critical header extension is refused",
            "RFC 7515 §4.1.11: a recipient that does not understand an extension listed in `crit` must refuse the JWS",
            [CriticalHeaderToken],
            critical_header
        ),
    ]
}

async fn duplicate_member(ctx: &Ctx) -> Verdict {
    let token = ctx.settings.tokens.duplicate_member.as_deref();
    expect_status(&ctx.get(SEARCH, token).await, 401)
}

async fn critical_header(ctx: &Ctx) -> Verdict {
    let token = ctx.settings.tokens.critical_header.as_deref();
    expect_status(&ctx.get(SEARCH, token).await, 401)
}

async fn scheme(ctx: &Ctx, scheme: &str) -> Result<crate::client::Answer, String> {
    let token = ctx.settings.tokens.user.as_deref().unwrap_or_default();
    let value = format!("{scheme} {token}");
    ctx.client
        .send(
            http::Method::GET,
            &ctx.path(SEARCH),
            &[("authorization", value.as_str())],
            None,
        )
        .await
}

async fn holder_of_key(ctx: &Ctx) -> Verdict {
    expect_status(&scheme(ctx, "Holder-of-key").await, 200)
}

async fn dpop(ctx: &Ctx) -> Verdict {
    expect_status(&scheme(ctx, "DPoP").await, 401)
}

async fn opaque(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(SEARCH, Some("b3BhcXVlLXRva2VuLXRoYXQtbm9ib2R5LWlzc3VlZA"))
            .await,
        401,
    )
}

async fn extra_part(ctx: &Ctx) -> Verdict {
    let token = format!(
        "{}.e30",
        ctx.settings.tokens.user.as_deref().unwrap_or_default()
    );
    expect_status(&ctx.get(SEARCH, Some(&token)).await, 401)
}

async fn valid_token(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(SEARCH, ctx.settings.tokens.user.as_deref()).await,
        200,
    )
}

async fn missing_token(ctx: &Ctx) -> Verdict {
    let answer = ctx.get(SEARCH, None).await;
    match &answer {
        Ok(a) if a.status == 401 => {
            let challenge = a.header("www-authenticate");
            check(
                challenge.starts_with("Bearer"),
                format!("401 without a Bearer challenge: {challenge:?}"),
            )
        }
        _ => expect_status(&answer, 401),
    }
}

async fn malformed_token(ctx: &Ctx) -> Verdict {
    let answer = ctx.get(SEARCH, Some("not-a-token")).await;
    match &answer {
        Ok(a) if a.status == 401 => {
            let challenge = a.header("www-authenticate");
            check(
                challenge.contains("invalid_token"),
                format!("no error=\"invalid_token\": {challenge:?}"),
            )
        }
        _ => expect_status(&answer, 401),
    }
}

async fn alg_none(ctx: &Ctx) -> Verdict {
    let token = unsigned(ctx.settings.tokens.user.as_deref().unwrap_or_default());
    expect_status(&ctx.get(SEARCH, Some(&token)).await, 401)
}

async fn bad_signature(ctx: &Ctx) -> Verdict {
    let token = altered_signature(ctx.settings.tokens.user.as_deref().unwrap_or_default());
    expect_status(&ctx.get(SEARCH, Some(&token)).await, 401)
}

async fn tampered_payload(ctx: &Ctx) -> Verdict {
    let token = altered_payload(ctx.settings.tokens.user.as_deref().unwrap_or_default());
    expect_status(&ctx.get(SEARCH, Some(&token)).await, 401)
}

async fn expired(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(SEARCH, ctx.settings.tokens.expired.as_deref())
            .await,
        401,
    )
}

async fn wrong_audience(ctx: &Ctx) -> Verdict {
    expect_status(
        &ctx.get(SEARCH, ctx.settings.tokens.wrong_audience.as_deref())
            .await,
        401,
    )
}

async fn basic_scheme(ctx: &Ctx) -> Verdict {
    let token = ctx.settings.tokens.user.as_deref().unwrap_or_default();
    let value = format!("Basic {token}");
    let answer = ctx
        .client
        .send(
            http::Method::GET,
            &ctx.path(SEARCH),
            &[("authorization", value.as_str())],
            None,
        )
        .await;
    expect_status(&answer, 401)
}

async fn query_token(ctx: &Ctx) -> Verdict {
    let token = ctx.settings.tokens.user.as_deref().unwrap_or_default();
    let answer = ctx
        .client
        .send(
            http::Method::GET,
            &ctx.path(&format!("Patient?_count=1&access_token={token}")),
            &[],
            None,
        )
        .await;
    expect_one_of(&answer, &[400, 401])
}

async fn other_certificate(ctx: &Ctx) -> Verdict {
    let Some(other) = &ctx.other else {
        return Verdict::Skip("no other certificate".into());
    };
    let token = ctx.settings.tokens.user.as_deref().unwrap_or_default();
    let value = format!("Bearer {token}");
    let answer = other
        .send(
            http::Method::GET,
            &ctx.path(SEARCH),
            &[("authorization", value.as_str())],
            None,
        )
        .await;
    match &answer {
        Ok(a) if a.status == 200 => Verdict::Fail(format!(
            "the token was accepted from another certificate {} (is it certificate-bound?)",
            describe(a)
        )),
        _ => expect_status(&answer, 401),
    }
}

async fn two_headers(ctx: &Ctx) -> Verdict {
    let token = ctx.settings.tokens.user.as_deref().unwrap_or_default();
    let value = format!("Bearer {token}");
    let answer = ctx
        .client
        .send(
            http::Method::GET,
            &ctx.path(SEARCH),
            &[
                ("authorization", value.as_str()),
                ("authorization", "Bearer another"),
            ],
            None,
        )
        .await;
    expect_one_of(&answer, &[400, 401])
}
