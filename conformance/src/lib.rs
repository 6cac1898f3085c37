//! Portvagt's conformance suite: checks that a deployment (its certificates, its issuer, its
//! backend) enforces what it should, the way Inferno certifies SMART servers. Each case has an
//! id, a title, the requirement it checks with its source (SMART App Launch, RFC 6750/7662/8705/
//! 8693, FHIR R4 REST, IHE BALP), and a failure message that says what went wrong. A case whose
//! inputs were not given is skipped with the reason.
//!
//! [`run`] is the library entry; the `portvagt-conformance` binary wraps it and writes the
//! reports ([`report`]).

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

pub mod cases;
pub mod client;
pub mod demo;
pub mod report;

use client::{Answer, Client, Identity};
use report::{CaseResult, Report};

/// What the suite needs to know about the deployment and its callers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The FHIR base URL, e.g. `https://fhir.example.dk/fhir`.
    pub base_url: String,
    /// The CA that issued the deployment's server certificate, PEM.
    pub ca_pem: String,
    /// The client certificate the deployment accepts (and tokens are bound to, if they are).
    pub identity: Identity,
    /// Another client certificate the deployment accepts: tokens bound to `identity` must fail
    /// with it.
    pub other_identity: Option<Identity>,
    /// A client certificate from a CA the deployment does not trust.
    pub foreign_identity: Option<Identity>,
    /// Tokens for the callers the cases play.
    pub tokens: Tokens,
    /// A patient whose data `tokens.patient` may read (its `patient` claim).
    pub own_patient: Option<String>,
    /// A patient whose data `tokens.patient` may not read.
    pub other_patient: Option<String>,
    /// A signed SOSI ID card for `identity`, for the token exchange cases (XML).
    pub sosi_card: Option<String>,
    /// A patient who has blocked the professional of `tokens.blocked` (negative consent).
    pub blocked_patient: Option<String>,
    /// The citizen listener's FHIR base URL (no client certificate), if the deployment has one.
    pub citizen_base_url: Option<String>,
    /// A patient the professional of `tokens.bound` has a treatment relationship with.
    pub related_patient: Option<String>,
    /// A patient she has none with (and who has not blocked her).
    pub unrelated_patient: Option<String>,
}

/// Tokens for the callers the cases play; each is optional, and the cases that need a missing
/// one are skipped.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// A user token with broad read scopes (e.g. `user/*.rs`).
    pub user: Option<String>,
    /// A patient-context token (`patient/*.rs`, with `patient` = `own_patient`).
    pub patient: Option<String>,
    /// A user token with only `user/Observation.rs`.
    pub narrow: Option<String>,
    /// An expired token of the deployment's issuer.
    pub expired: Option<String>,
    /// A valid token of the issuer for another audience.
    pub wrong_audience: Option<String>,
    /// A v2 granular token: `user/Observation.rs?category=...laboratory`.
    pub granular: Option<String>,
    /// A v1 token: `user/Observation.read`.
    pub v1: Option<String>,
    /// A professional `blocked_patient` has blocked, purpose TREATMENT, `user/*.rs`.
    pub blocked: Option<String>,
    /// The same professional with purpose EMERGENCY.
    pub emergency: Option<String>,
    /// A professional the treatment-relationship check binds (a role it names), purpose
    /// TREATMENT, `user/*.rs` and `user/Observation.c`.
    pub bound: Option<String>,
    /// The same professional with purpose EMERGENCY.
    pub bound_emergency: Option<String>,
    /// The patient of `tokens.patient` as her browser holds her token for the citizen
    /// listener: the same claims, `aud` the citizen listener's (and, for the blocks she makes
    /// there, `patient/Consent.cu`).
    pub citizen: Option<String>,
    /// A professional, named by an authorisation id (`authorization_id`), whom nothing binds
    /// or blocks from reading `own_patient`, `user/*.rs`: the one she blocks from her log.
    pub colleague: Option<String>,
    /// A token of the issuer, bound to the client certificate, whose claims then give `cnf`
    /// a second time, `null` ([`strict_tokens`]).
    pub duplicate_member: Option<String>,
    /// A valid token of the issuer whose header names a critical extension no one
    /// understands ([`strict_tokens`]).
    pub critical_header: Option<String>,
}

/// The tokens AUTH-17 and AUTH-18 need, made from a valid token's JOSE header and its claims
/// (with a `cnf` binding) by `sign`, which signs a header and claims given as their exact
/// bytes: the claims with `cnf` given again, `null` after it (a gateway that keeps the last
/// member sees a bearer token, one that keeps the first a bound one: either way it should have
/// refused), and the header naming, in `crit`, an extension no one understands.
pub fn strict_tokens(
    header: &serde_json::Value,
    claims: &serde_json::Value,
    sign: impl Fn(&[u8], &[u8]) -> anyhow::Result<String>,
) -> anyhow::Result<(String, String)> {
    let open = |value: &serde_json::Value| {
        let text = value.to_string();
        text.strip_suffix('}').unwrap_or(&text).to_owned()
    };
    anyhow::ensure!(
        claims.get("cnf").is_some(),
        "the claims must hold a cnf binding to give it twice"
    );
    let duplicate = sign(
        header.to_string().as_bytes(),
        format!(r#"{},"cnf":null}}"#, open(claims)).as_bytes(),
    )?;
    let critical = sign(
        format!(
            r#"{},"crit":["urn:portvagt:conformance"],"urn:portvagt:conformance":true}}"#,
            open(header)
        )
        .as_bytes(),
        claims.to_string().as_bytes(),
    )?;
    Ok((duplicate, critical))
}

/// An input a case needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `tokens.user`
    UserToken,
    /// `tokens.patient` with `own_patient` and `other_patient`
    PatientToken,
    /// `tokens.narrow`
    NarrowToken,
    /// `tokens.expired`
    ExpiredToken,
    /// `tokens.wrong_audience`
    WrongAudienceToken,
    /// `other_identity`
    OtherCertificate,
    /// `foreign_identity`
    ForeignCertificate,
    /// `sosi_card`
    SosiCard,
    /// `tokens.granular`
    GranularToken,
    /// `tokens.v1`
    V1Token,
    /// `tokens.blocked`, `tokens.emergency` and `blocked_patient`
    ConsentBlock,
    /// `citizen_base_url` and `tokens.citizen`
    CitizenListener,
    /// The same, `tokens.colleague`, `own_patient` and `other_patient`: citizens' own blocks
    /// (`[citizen] blocks`)
    CitizenBlocks,
    /// `tokens.bound`, `tokens.bound_emergency`, `related_patient` and `unrelated_patient`
    Relationship,
    /// `tokens.duplicate_member`
    DuplicateMemberToken,
    /// `tokens.critical_header`
    CriticalHeaderToken,
}

impl Need {
    fn missing(self, settings: &Settings) -> Option<&'static str> {
        let given = match self {
            Need::UserToken => settings.tokens.user.is_some(),
            Need::PatientToken => {
                settings.tokens.patient.is_some()
                    && settings.own_patient.is_some()
                    && settings.other_patient.is_some()
            }
            Need::NarrowToken => settings.tokens.narrow.is_some(),
            Need::ExpiredToken => settings.tokens.expired.is_some(),
            Need::WrongAudienceToken => settings.tokens.wrong_audience.is_some(),
            Need::DuplicateMemberToken => settings.tokens.duplicate_member.is_some(),
            Need::CriticalHeaderToken => settings.tokens.critical_header.is_some(),
            Need::OtherCertificate => settings.other_identity.is_some(),
            Need::ForeignCertificate => settings.foreign_identity.is_some(),
            Need::SosiCard => settings.sosi_card.is_some(),
            Need::GranularToken => settings.tokens.granular.is_some(),
            Need::V1Token => settings.tokens.v1.is_some(),
            Need::ConsentBlock => {
                settings.tokens.blocked.is_some()
                    && settings.tokens.emergency.is_some()
                    && settings.blocked_patient.is_some()
            }
            Need::CitizenListener => {
                settings.citizen_base_url.is_some() && settings.tokens.citizen.is_some()
            }
            Need::CitizenBlocks => {
                settings.citizen_base_url.is_some()
                    && settings.tokens.citizen.is_some()
                    && settings.tokens.colleague.is_some()
                    && settings.own_patient.is_some()
                    && settings.other_patient.is_some()
            }
            Need::Relationship => {
                settings.tokens.bound.is_some()
                    && settings.tokens.bound_emergency.is_some()
                    && settings.related_patient.is_some()
                    && settings.unrelated_patient.is_some()
            }
        };
        (!given).then_some(match self {
            Need::UserToken => "no user token (--token user=...)",
            Need::PatientToken => {
                "no patient token with own and other patient (--token patient=... --own-patient --other-patient)"
            }
            Need::NarrowToken => "no narrow token (--token narrow=..., scope user/Observation.rs)",
            Need::ExpiredToken => "no expired token (--token expired=...)",
            Need::WrongAudienceToken => "no token for another audience (--token wrong-audience=...)",
            Need::DuplicateMemberToken => {
                "no token giving a claim twice (--token duplicate-member=...)"
            }
            Need::CriticalHeaderToken => {
                "no token with a critical header extension (--token critical-header=...)"
            }
            Need::OtherCertificate => "no second client certificate (--other-cert/--other-key)",
            Need::ForeignCertificate => "no client certificate from an untrusted CA (--foreign-cert/--foreign-key)",
            Need::SosiCard => "no SOSI ID card (--sosi-card)",
            Need::GranularToken => "no granular token (--token granular=..., user/Observation.rs?category=...|laboratory)",
            Need::V1Token => "no v1 token (--token v1=..., user/Observation.read)",
            Need::ConsentBlock => {
                "no blocked professional (--token blocked=... --token emergency=... --blocked-patient)"
            }
            Need::CitizenListener => {
                "no citizen listener with a citizen's token (--citizen-target --token citizen=...)"
            }
            Need::CitizenBlocks => {
                "no professional for the citizen to block (--citizen-target --token citizen=... --token colleague=... --own-patient --other-patient)"
            }
            Need::Relationship => {
                "no professional bound by the relationship check (--token bound=... --token bound-emergency=... --related-patient --unrelated-patient)"
            }
        })
    }
}

/// A case's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The deployment did what the requirement asks.
    Pass,
    /// It did not: what was expected and what came.
    Fail(String),
    /// Not run: why.
    Skip(String),
}

/// The future a case's check returns.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// One conformance case.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Stable id, e.g. `AUTH-03`.
    pub id: &'static str,
    /// What it checks, in a line.
    pub title: &'static str,
    /// The requirement and where it comes from.
    pub requirement: &'static str,
    /// The inputs it needs.
    pub needs: &'static [Need],
    /// The check.
    pub check: for<'a> fn(&'a Ctx) -> CheckFuture<'a>,
}

/// What checks get: the settings and ready clients.
#[derive(Debug)]
pub struct Ctx {
    /// The inputs.
    pub settings: Settings,
    /// Presents `identity`.
    pub client: Client,
    /// Presents no certificate.
    pub anonymous: Client,
    /// Presents `other_identity`, if given.
    pub other: Option<Client>,
    /// Presents `foreign_identity`, if given.
    pub foreign: Option<Client>,
    /// The path of the FHIR base, e.g. `/fhir`.
    pub base_path: String,
    /// The citizen listener (presenting no certificate, as a browser) and its FHIR base path.
    pub citizen: Option<(Client, String)>,
    host: String,
    port: u16,
}

impl Ctx {
    /// Builds the clients for `settings`.
    pub fn new(settings: Settings) -> anyhow::Result<Ctx> {
        let uri: http::Uri = settings.base_url.parse()?;
        if uri.scheme_str() != Some("https") {
            anyhow::bail!("--target must be an https:// URL");
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("--target needs a host"))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let client = Client::new(&host, port, &settings.ca_pem, Some(&settings.identity))?;
        let anonymous = Client::new(&host, port, &settings.ca_pem, None)?;
        let other = settings
            .other_identity
            .as_ref()
            .map(|identity| Client::new(&host, port, &settings.ca_pem, Some(identity)))
            .transpose()?;
        let foreign = settings
            .foreign_identity
            .as_ref()
            .map(|identity| Client::new(&host, port, &settings.ca_pem, Some(identity)))
            .transpose()?;
        let citizen = match &settings.citizen_base_url {
            None => None,
            Some(url) => {
                let uri: http::Uri = url.parse()?;
                if uri.scheme_str() != Some("https") {
                    anyhow::bail!("--citizen-target must be an https:// URL");
                }
                let host = uri
                    .host()
                    .ok_or_else(|| anyhow::anyhow!("--citizen-target needs a host"))?;
                let client =
                    Client::new(host, uri.port_u16().unwrap_or(443), &settings.ca_pem, None)?;
                Some((client, uri.path().trim_end_matches('/').to_owned()))
            }
        };
        Ok(Ctx {
            citizen,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            settings,
            client,
            anonymous,
            other,
            foreign,
            host,
            port,
        })
    }

    /// The host and port of the deployment.
    pub fn address(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    /// `GET` of `path` (relative to the FHIR base) with `token`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Answer, String> {
        self.send(http::Method::GET, path, token, None).await
    }

    /// A request below the FHIR base with `token` as a Bearer token.
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        json: Option<serde_json::Value>,
    ) -> Result<Answer, String> {
        bearer_request(&self.client, method, &self.path(path), token, json).await
    }

    /// [`Ctx::send`] on the citizen listener (no client certificate), below its FHIR base.
    pub async fn send_citizen(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        json: Option<serde_json::Value>,
    ) -> Result<Answer, String> {
        let Some((client, base)) = &self.citizen else {
            return Err("no citizen listener".into());
        };
        bearer_request(client, method, &format!("{base}/{path}"), token, json).await
    }

    /// A JSON Patch to the citizen listener with `token`.
    pub async fn patch_citizen(
        &self,
        path: &str,
        token: Option<&str>,
        patch: &serde_json::Value,
    ) -> Result<Answer, String> {
        let Some((client, base)) = &self.citizen else {
            return Err("no citizen listener".into());
        };
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|value| ("authorization", value.as_str()))
            .collect();
        let body = (
            "application/json-patch+json",
            patch.to_string().into_bytes(),
        );
        client
            .send(
                http::Method::PATCH,
                &format!("{base}/{path}"),
                &headers,
                Some(body),
            )
            .await
    }

    /// The full path of `path` below the FHIR base.
    pub fn path(&self, path: &str) -> String {
        if path.is_empty() {
            self.base_path.clone()
        } else if path.starts_with('?') {
            format!("{}{path}", self.base_path)
        } else {
            format!("{}/{path}", self.base_path)
        }
    }
}

/// A request to `full_path` with `token` as a Bearer token and `json` as a FHIR body.
async fn bearer_request(
    client: &Client,
    method: http::Method,
    full_path: &str,
    token: Option<&str>,
    json: Option<serde_json::Value>,
) -> Result<Answer, String> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(value) = &authorization {
        headers.push(("authorization", value.as_str()));
    }
    let body = json.map(|v| ("application/fhir+json", v.to_string().into_bytes()));
    client.send(method, full_path, &headers, body).await
}

/// Runs every case (or those whose id starts with one of `only`), calling `progress` after
/// each, and returns the report.
pub async fn run(
    settings: Settings,
    only: &[String],
    mut progress: impl FnMut(usize, usize, &CaseResult),
) -> anyhow::Result<Report> {
    let target = settings.base_url.clone();
    let ctx = Ctx::new(settings)?;
    let cases: Vec<Case> = cases::all()
        .into_iter()
        .filter(|case| only.is_empty() || only.iter().any(|prefix| case.id.starts_with(prefix)))
        .collect();
    let total = cases.len();
    let mut results = Vec::with_capacity(total);
    for (index, case) in cases.into_iter().enumerate() {
        let started = Instant::now();
        let missing = case
            .needs
            .iter()
            .find_map(|need| need.missing(&ctx.settings));
        let verdict = match missing {
            Some(reason) => Verdict::Skip(reason.to_owned()),
            None => (case.check)(&ctx).await,
        };
        let result = CaseResult {
            id: case.id,
            title: case.title,
            requirement: case.requirement,
            verdict,
            seconds: started.elapsed().as_secs_f64(),
        };
        progress(index + 1, total, &result);
        results.push(result);
    }
    Ok(Report { target, results })
}
