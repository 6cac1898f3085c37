//! SAML token exchange end to end: a SOSI ID card or OIOSAML assertion signed by the test STS,
//! exchanged at `POST /token` over mTLS, and the Portvagt token it yields used for FHIR calls
//! against the real backend. Replay across two replicas sharing a real Redis.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use portvagt_certs::DevPki;
use portvagt_certs::saml::{OiosamlAssertion, SignatureAlgorithm, SosiCard};
use serde_json::Value;

use crate::support::{Answer, Client, Gateway, Options, metric_value};

const PORTVAGT: &str = "https://portvagt.test.invalid";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
/// The test STS, pinned to the issuer names the SOSI cards and OIOSAML assertions it signs use.
const STS: &str = r#"{ certificate = "pki/sts.crt", issuers = ["TEST1-NSP-STS", "http://sts.sundhedsdatastyrelsen.dk/"] }"#;

/// A gateway with `[token_exchange]` trusting the PKI's STS certificate.
fn gateway_with(pki: Option<Arc<DevPki>>, extra: &str) -> Gateway {
    Gateway::start_with(exchange_options(pki, extra))
}

/// Options for a gateway with `[token_exchange]` (`extra` goes into that table), to which a
/// test may add config before it.
fn exchange_options(pki: Option<Arc<DevPki>>, extra: &str) -> Options {
    let key = portvagt::auth::issuer_key::IssuerKey::generate("portvagt-test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    key.save(dir.path()).unwrap();
    let pem = std::fs::read_to_string(dir.path().join("issuer.key")).unwrap();
    Options {
        pki,
        files: vec![("exchange.key".into(), pem)],
        extra_config: format!(
            r#"
[token_exchange]
issuer = "{PORTVAGT}"
signing_key = "exchange.key"
key_id = "portvagt-test"
trusted_sts = [{STS}]
assertion_audiences = ["{PORTVAGT}"]
allow_sha1 = true
{extra}
"#
        ),
        ..Options::default()
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            let encode = |text: &str| {
                text.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            char::from(b).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect::<String>()
            };
            format!("{}={}", encode(name), encode(value))
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn post_token(client: &Client, body: String) -> Answer {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    client.send(request).await.unwrap()
}

/// RFC 8693 form, assertion base64url without padding.
fn rfc8693(xml: &str) -> String {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(xml);
    form(&[
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", &token),
        ("subject_token_type", SAML2),
    ])
}

/// OIO IDWS REST form, assertion base64.
fn oio_form(xml: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(xml);
    form(&[("saml-token", &token)])
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

fn error_code(answer: &Answer) -> (String, String) {
    let body = answer.json();
    let description = body["error_description"].as_str().unwrap_or_default();
    (
        body["error"].as_str().unwrap_or_default().to_owned(),
        description.split(':').next().unwrap_or_default().to_owned(),
    )
}

async fn fhir_get(client: &Client, path: &str, scheme: &str, token: &str) -> Answer {
    let request = Request::builder()
        .uri(path)
        .header("accept", "application/fhir+json")
        .header("authorization", format!("{scheme} {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    client.send(request).await.unwrap()
}

#[tokio::test]
async fn system_card_is_exchanged_once_for_a_bound_token_that_reads_fhir() {
    let gateway = gateway_with(None, "");
    let pki = &gateway.pki;
    let card = SosiCard::system(&pki.client.cert_der);
    let xml = card.sign(&pki.sts).unwrap();
    let client = gateway.client();

    let answer = post_token(&client, rfc8693(&xml)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["cache-control"], "no-store");
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((3590..=3600).contains(&expires_in), "{expires_in}");
    let token = body["access_token"].as_str().unwrap();

    let claims = claims_of(token);
    let thumbprint = portvagt::tls::PeerIdentity::from_verified_leaf(&pki.client.cert_der)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    assert_eq!(claims["iss"], PORTVAGT);
    assert_eq!(claims["cnf"]["x5t#S256"], thumbprint);
    assert_eq!(claims["idcard_type"], "system");
    assert_eq!(claims["acr"], "dgws:3");
    assert_eq!(claims["src_iss"], "TEST1-NSP-STS");
    assert_eq!(claims["src_jti"], card.card_id.as_str());
    assert_eq!(claims["sub"], "12345678");
    assert_eq!(claims["sub_fmt"], "medcom:cvrnumber");
    assert_eq!(claims["care_provider"]["id"], "12345678");
    assert_eq!(claims["care_provider"]["type"], "medcom:cvrnumber");
    assert_eq!(claims["system_name"], "Journalsystem Demo");
    assert_eq!(claims["scope"], "system/*.rs");

    let read = fhir_get(&client, "/fhir/Patient/pat-anne", "Bearer", token).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["id"], "pat-anne");
    // system/*.rs: reading yes, writing no.
    let write = client
        .send(crate::support::request(
            Method::DELETE,
            "/fhir/Patient/pat-anne",
            Some(token),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(write.status, 403, "{}", write.text());

    // The same card again: refused, at this replica.
    let replay = post_token(&client, rfc8693(&xml)).await;
    assert_eq!(replay.status, 400);
    assert_eq!(
        error_code(&replay),
        ("invalid_grant".into(), "assertion-replayed".into())
    );

    // The issued token is bound: another certificate cannot use it.
    let other = gateway.client_with(Some(&pki.employee));
    let stolen = fhir_get(&other, "/fhir/Patient/pat-anne", "Bearer", token).await;
    assert_eq!(stolen.status, 401);
    assert_eq!(stolen.detail_code(), "certificate-binding-mismatch");

    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(
            &metrics,
            "portvagt_token_exchanges_total{outcome=\"issued\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "portvagt_token_exchanges_total{outcome=\"assertion-replayed\"}"
        ),
        Some(1.0)
    );

    // The key that signed it is published.
    let jwks = client.get("/.well-known/jwks.json", None).await.unwrap();
    assert_eq!(jwks.status, 200);
    assert_eq!(jwks.json()["keys"][0]["kid"], "portvagt-test");
}

#[tokio::test]
async fn legacy_user_card_in_the_oio_form_gives_a_holder_of_key_token() {
    let gateway = gateway_with(None, "");
    let pki = &gateway.pki;
    let mut card = SosiCard::user(&pki.client.cert_der);
    card.algorithm = SignatureAlgorithm::RsaSha1;
    card.timestamps_without_zone = true;
    let answer = post_token(&gateway.client(), oio_form(&card.sign(&pki.sts).unwrap())).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["token_type"], "Holder-of-key");
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["acr"], "dgws:4");
    assert_eq!(claims["idcard_type"], "user");
    assert_eq!(claims["cpr"], "0501792275");
    assert_eq!(claims["role"], "7170");
    assert_eq!(claims["authorization_id"], "NS363");
    assert_eq!(claims["given_name"], "Mette");
    assert_eq!(claims["scope"], "user/*.rs");

    // The exchange itself is in the audit trail, naming the person by CPR and authorisation.
    let rid = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let events = gateway.audit_events_for(&rid);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["subtype"][0]["code"], "token-exchange");
    assert_eq!(events[0]["outcome"], "0");
    let user = events[0]["agent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["requestor"] == true)
        .unwrap();
    assert_eq!(user["name"], "Mette Kjær");
    let other_ids: Vec<&str> = user["extension"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["valueIdentifier"]["value"].as_str().unwrap())
        .collect();
    assert_eq!(other_ids, vec!["0501792275", "NS363"]);

    let read = fhir_get(
        &gateway.client(),
        "/fhir/Observation?_count=1",
        "Holder-of-key",
        &token,
    )
    .await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["resourceType"], "Bundle");
}

#[tokio::test]
async fn oiosaml_assertion_about_a_patient_is_confined_to_that_patient() {
    let gateway = gateway_with(None, "");
    let pki = &gateway.pki;
    let assertion = OiosamlAssertion::physician(&pki.client.cert_der, PORTVAGT, "1111111118");
    let answer = post_token(
        &gateway.client(),
        rfc8693(&assertion.sign(&pki.sts).unwrap()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let token = answer.json()["access_token"].as_str().unwrap().to_owned();
    let claims = claims_of(&token);
    assert_eq!(claims["patient"], "pat-anne");
    assert_eq!(claims["purpose_of_use"], "TREATMENT");
    assert_eq!(claims["acr"], "idws:3");
    assert_eq!(claims["scope"], "patient/*.rs");

    let client = gateway.client();
    let own = fhir_get(&client, "/fhir/Patient/pat-anne", "Bearer", &token).await;
    assert_eq!(own.status, 200, "{}", own.text());
    let other = fhir_get(&client, "/fhir/Patient/pat-bo", "Bearer", &token).await;
    assert_eq!(other.status, 403, "{}", other.text());

    // A patient the backend does not know cannot be exchanged for.
    let unknown = OiosamlAssertion::physician(&pki.client.cert_der, PORTVAGT, "0101010101");
    let answer = post_token(&client, rfc8693(&unknown.sign(&pki.sts).unwrap())).await;
    assert_eq!(
        error_code(&answer),
        ("invalid_grant".into(), "unknown-patient".into())
    );
}

#[tokio::test]
async fn the_subject_confirmation_is_checked_against_this_endpoint_and_this_connection() {
    let gateway = gateway_with(None, "");
    let pki = &gateway.pki;
    let client = gateway.client();
    let confirmed = |confirmation: &[(&'static str, &str)]| {
        let mut assertion =
            OiosamlAssertion::physician(&pki.client.cert_der, PORTVAGT, "1111111118");
        assertion.confirmation = confirmation
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect();
        rfc8693(&assertion.sign(&pki.sts).unwrap())
    };
    let endpoint = format!("{PORTVAGT}/token");
    // The test client connects from the loopback address, IPv4.
    let answer = post_token(
        &client,
        confirmed(&[("Recipient", &endpoint), ("Address", "127.0.0.1")]),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    for (confirmation, code) in [
        (
            vec![("Recipient", "https://other-gateway.test.invalid/token")],
            "wrong-recipient",
        ),
        (vec![("Address", "192.0.2.44")], "wrong-address"),
        (vec![("Address", "not an address")], "wrong-address"),
        (
            vec![("InResponseTo", "_authn-request-7")],
            "in-response-to-refused",
        ),
    ] {
        let answer = post_token(&client, confirmed(&confirmation)).await;
        assert_eq!(answer.status, 400, "{confirmation:?}: {}", answer.text());
        assert_eq!(
            error_code(&answer),
            ("invalid_grant".into(), code.into()),
            "{confirmation:?}"
        );
    }

    // Behind a TCP proxy that hides the client, the operator turns the Address check off.
    let proxied = gateway_with(
        Some(gateway.pki.clone()),
        "check_confirmation_address = false",
    );
    let answer = post_token(&proxied.client(), confirmed(&[("Address", "192.0.2.44")])).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

#[tokio::test]
async fn replay_is_keyed_on_the_signing_certificate_not_on_the_claimed_issuer() {
    let gateway = gateway_with(None, "");
    let pki = &gateway.pki;
    let client = gateway.client();
    let mut card = SosiCard::system(&pki.client.cert_der);
    let first = card.sign(&pki.sts).unwrap();
    assert_eq!(post_token(&client, rfc8693(&first)).await.status, 200);
    // The same card id under the other issuer name the same STS may use: the same card.
    card.issuer = "http://sts.sundhedsdatastyrelsen.dk/".into();
    let answer = post_token(&client, rfc8693(&card.sign(&pki.sts).unwrap())).await;
    assert_eq!(
        error_code(&answer),
        ("invalid_grant".into(), "assertion-replayed".into()),
        "{}",
        answer.text()
    );
    // A name the STS is not pinned to is refused before replay is looked at.
    card.issuer = "ROGUE-STS".into();
    card.card_id = uuid::Uuid::new_v4().to_string();
    let answer = post_token(&client, rfc8693(&card.sign(&pki.sts).unwrap())).await;
    assert_eq!(
        error_code(&answer),
        ("invalid_grant".into(), "issuer-not-allowed".into())
    );
}

#[tokio::test]
async fn a_card_is_used_once_whichever_certificate_of_its_key_it_names() {
    // The STS certificate renewed with the same key, both trusted during the rollover.
    let pki = Arc::new(DevPki::generate().unwrap());
    let renewed = pki.ca.renew_sts(&pki.sts, "Test STS (renewed)").unwrap();
    let both = format!(
        "{STS}, {{ certificate = \"sts-next.crt\", issuers = [\"TEST1-NSP-STS\", \"http://sts.sundhedsdatastyrelsen.dk/\"] }}"
    );
    let mut options = exchange_options(Some(pki.clone()), "");
    options.extra_config = options.extra_config.replace(
        &format!("trusted_sts = [{STS}]"),
        &format!("trusted_sts = [{both}]"),
    );
    options
        .files
        .push(("sts-next.crt".into(), renewed.cert_pem.clone()));
    let gateway = Gateway::start_with(options);
    let client = gateway.client();
    let card = SosiCard::system(&pki.client.cert_der);
    let first = post_token(&client, rfc8693(&card.sign(&pki.sts).unwrap())).await;
    assert_eq!(first.status, 200, "{}", first.text());
    // The same card, its (unsigned) KeyInfo naming the other certificate of the same key.
    let again = post_token(&client, rfc8693(&card.sign(&renewed).unwrap())).await;
    assert_eq!(
        error_code(&again),
        ("invalid_grant".into(), "assertion-replayed".into()),
        "{}",
        again.text()
    );

    // Certificates of one key pinned to different issuers: the presenter would pick the pins.
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(&dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/sts-next.crt"), &renewed.cert_pem).unwrap();
    portvagt::auth::issuer_key::IssuerKey::generate("k")
        .unwrap()
        .save(&dir.path().join("key"))
        .unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\n\
         client_ca = \"pki/ca.crt\"\n[backend]\nurl = \"http://127.0.0.1:1/fhir\"\n[token_exchange]\n\
         issuer = \"{PORTVAGT}\"\nsigning_key = \"key/issuer.key\"\ntrusted_sts = [{STS}, \
         {{ certificate = \"pki/sts-next.crt\", issuers = [\"OTHER-STS\"] }}]\n"
    );
    let (code, stderr) = crate::support::check_config(dir.path(), &config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("token_exchange.trusted_sts") && stderr.contains("same key"),
        "{stderr}"
    );
}

#[tokio::test]
async fn refusals_are_rfc6749_errors_with_a_specific_code() {
    let gateway = gateway_with(None, "min_authentication_level = 4");
    let pki = &gateway.pki;
    let client = gateway.client();
    let user = SosiCard::user(&pki.client.cert_der).sign(&pki.sts).unwrap();
    let other_sts = pki.ca.issue_sts("Rogue STS").unwrap();
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "tampered card",
            rfc8693(&user.replace(">7170<", ">5166<")),
            "invalid_grant",
            "digest-mismatch",
        ),
        (
            "card for another certificate",
            rfc8693(
                &SosiCard::user(&pki.employee.cert_der)
                    .sign(&pki.sts)
                    .unwrap(),
            ),
            "invalid_grant",
            "holder-of-key-mismatch",
        ),
        (
            "system card below the required level 4",
            rfc8693(
                &SosiCard::system(&pki.client.cert_der)
                    .sign(&pki.sts)
                    .unwrap(),
            ),
            "invalid_grant",
            "authentication-level-too-low",
        ),
        (
            "card from an untrusted STS",
            rfc8693(
                &SosiCard::user(&pki.client.cert_der)
                    .sign(&other_sts)
                    .unwrap(),
            ),
            "invalid_grant",
            "untrusted-signer",
        ),
        (
            "DTD",
            rfc8693(&format!("<!DOCTYPE x [<!ENTITY e \"e\">]>{user}")),
            "invalid_grant",
            "dtd-refused",
        ),
        (
            "not base64",
            form(&[("saml-token", "***")]),
            "invalid_grant",
            "malformed-assertion",
        ),
        (
            "client credentials grant",
            form(&[("grant_type", "client_credentials")]),
            "unsupported_grant_type",
            "unsupported-grant-type",
        ),
        (
            "scope beyond what the card grants",
            format!("{}&scope=user%2F*.cruds", rfc8693(&user)),
            "invalid_scope",
            "scope-not-granted",
        ),
        (
            "token for another audience",
            format!("{}&audience=https%3A%2F%2Felsewhere", rfc8693(&user)),
            "invalid_target",
            "unknown-audience",
        ),
    ];
    for (name, body, error, code) in cases {
        let answer = post_token(&client, body).await;
        assert_eq!(answer.status, 400, "{name}: {}", answer.text());
        let rid = answer.headers["x-request-id"].to_str().unwrap().to_owned();
        let events = gateway.audit_events_for(&rid);
        assert_eq!(
            events[0]["outcomeDesc"],
            format!("400 {code}"),
            "{name}: refused exchanges are audited too"
        );
        assert_eq!(answer.headers["content-type"], "application/json", "{name}");
        assert_eq!(error_code(&answer), (error.into(), code.into()), "{name}");
    }
    // The refused-for-scope card was not used up: it still exchanges.
    let answer = post_token(&client, rfc8693(&user)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    let get = client.get("/token", None).await.unwrap();
    assert_eq!(get.status, 405);
    assert_eq!(get.headers["allow"], "POST");

    let not_a_form = Request::builder()
        .method(Method::POST)
        .uri("/token")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from("{}")))
        .unwrap();
    let answer = client.send(not_a_form).await.unwrap();
    assert_eq!(
        error_code(&answer),
        ("invalid_request".into(), "not-a-form".into())
    );
}

#[tokio::test]
async fn operator_rules_see_the_role_and_purpose_of_an_exchanged_assertion() {
    let mut options = exchange_options(None, "");
    options.extra_config = format!(
        "[policy]\nrules_file = \"rules.toml\"\n{}",
        options.extra_config
    );
    options.files.push((
        "rules.toml".into(),
        r#"
[[rule]]
name = "physicians and nurses read clinical data for treatment"
effect = "allow"
roles = ["7170", "5166"]
purposes = ["TREATMENT"]
interactions = ["read", "search-type"]

[[rule]]
name = "only physicians read conditions"
effect = "deny"
roles = ["5166"]
resource_types = ["Condition"]
"#
        .into(),
    ));
    let gateway = Gateway::start_with(options);
    let pki = &gateway.pki;
    let client = gateway.client();
    let exchange = |role: &'static str, purpose: &'static str| {
        let mut assertion =
            OiosamlAssertion::physician(&pki.client.cert_der, PORTVAGT, "1111111118");
        for (name, value) in &mut assertion.attributes {
            if name.ends_with("subject:role") {
                *value = role.into();
            }
            if name.ends_with("subject:purposeofuse") {
                *value = purpose.into();
            }
        }
        let body = rfc8693(&assertion.sign(&pki.sts).unwrap());
        let client = gateway.client();
        async move {
            let answer = post_token(&client, body).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            answer.json()["access_token"].as_str().unwrap().to_owned()
        }
    };
    let physician = exchange("7170", "TREATMENT").await;
    let nurse = exchange("5166", "TREATMENT").await;
    let research = exchange("7170", "RESEARCH").await;
    let conditions = "/fhir/Condition?patient=pat-anne";
    let observations = "/fhir/Observation?patient=pat-anne";
    let cases = [
        (&physician, conditions, 200, ""),
        (&nurse, observations, 200, ""),
        (&nurse, conditions, 403, "denied-by-rule"),
        (&research, observations, 403, "no-rule-allows"),
    ];
    for (token, path, status, code) in cases {
        let answer = fhir_get(&client, path, "Bearer", token).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
        if status == 403 {
            assert_eq!(answer.detail_code(), code, "{path}");
        }
    }
}

/// A real Redis server on a free loopback port, stopped on drop.
pub(crate) struct Redis {
    child: Child,
    pub(crate) url: String,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        Self::spawn(|port| {
            (
                vec!["--port".into(), port.to_string()],
                format!("redis://127.0.0.1:{port}/0"),
            )
        })
    }

    /// A Redis that speaks TLS only (its certificate from `pki`'s CA) and lets in only the
    /// ACL user `portvagt` with `password`; the default user is off.
    pub(crate) fn start_secure(pki: &DevPki, password: &str) -> (Redis, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let server = pki.ca.issue_server(&["127.0.0.1"]).unwrap();
        std::fs::write(dir.path().join("redis.crt"), &server.cert_pem).unwrap();
        std::fs::write(dir.path().join("redis.key"), &server.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.crt"), &pki.ca.certificate().cert_pem).unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let redis = Self::spawn(|port| {
            let args = [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &file("redis.crt"),
                "--tls-key-file",
                &file("redis.key"),
                "--tls-ca-cert-file",
                &file("ca.crt"),
                "--tls-auth-clients",
                "no",
                "--user",
                "default",
                "off",
                "--user",
                "portvagt",
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ];
            (
                args.iter().map(|arg| (*arg).to_owned()).collect(),
                format!("rediss://portvagt@127.0.0.1:{port}/0"),
            )
        });
        (redis, dir)
    }

    /// Starts redis-server on a free loopback port with the arguments (and answers the URL)
    /// `setup` makes for it, and waits until it listens.
    fn spawn(setup: impl FnOnce(u16) -> (Vec<String>, String)) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (args, url) = setup(port);
        let child = Command::new("redis-server")
            .args(&args)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed; `make test` installs it");
        // Owned from here on, so it is stopped however the wait below ends.
        let redis = Redis { child, url };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start listening");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn replicas_sharing_redis_accept_a_card_once_and_fail_closed_without_it() {
    let mut redis = Redis::start();
    let pki = Arc::new(DevPki::generate().unwrap());
    let extra = format!("redis_url = \"{}\"", redis.url);
    let first = gateway_with(Some(pki.clone()), &extra);
    let second = gateway_with(Some(pki.clone()), &extra);
    let card = SosiCard::system(&pki.client.cert_der)
        .sign(&pki.sts)
        .unwrap();

    let answer = post_token(&first.client(), rfc8693(&card)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let replay = post_token(&second.client(), oio_form(&card)).await;
    assert_eq!(
        error_code(&replay),
        ("invalid_grant".into(), "assertion-replayed".into())
    );

    // Redis gone: no way to know whether a card was used, so no token.
    redis.child.kill().unwrap();
    redis.child.wait().unwrap();
    let fresh = SosiCard::system(&pki.client.cert_der)
        .sign(&pki.sts)
        .unwrap();
    let answer = post_token(&second.client(), rfc8693(&fresh)).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.headers["retry-after"], "5");
    assert_eq!(
        error_code(&answer),
        (
            "temporarily_unavailable".into(),
            "replay-cache-unavailable".into()
        )
    );
}

#[tokio::test]
async fn replicas_share_a_redis_over_tls_with_an_acl_user_and_a_password_from_a_file() {
    let pki = Arc::new(DevPki::generate().unwrap());
    let (redis, _dir) = Redis::start_secure(&pki, "s3cret-from-a-file");
    let replica = |url: &str, password: &str| {
        let mut options = exchange_options(
            Some(pki.clone()),
            &format!(
                "redis_url = \"{url}\"\n\n[redis]\nca_file = \"pki/ca.crt\"\npassword_file = \"redis.password\"\n"
            ),
        );
        options
            .files
            .push(("redis.password".into(), format!("{password}\n")));
        Gateway::start_with(options)
    };
    let first = replica(&redis.url, "s3cret-from-a-file");
    let second = replica(&redis.url, "s3cret-from-a-file");
    let card = SosiCard::system(&pki.client.cert_der)
        .sign(&pki.sts)
        .unwrap();
    let answer = post_token(&first.client(), rfc8693(&card)).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let replay = post_token(&second.client(), rfc8693(&card)).await;
    assert_eq!(
        error_code(&replay),
        ("invalid_grant".into(), "assertion-replayed".into())
    );

    // The wrong password, or plain TCP to the TLS port: Redis cannot be asked, so no token.
    for (url, password) in [
        (redis.url.clone(), "wrong"),
        (
            redis.url.replace("rediss://", "redis://"),
            "s3cret-from-a-file",
        ),
    ] {
        let gateway = replica(&url, password);
        let fresh = SosiCard::system(&pki.client.cert_der)
            .sign(&pki.sts)
            .unwrap();
        let answer = post_token(&gateway.client(), rfc8693(&fresh)).await;
        assert_eq!(
            error_code(&answer),
            (
                "temporarily_unavailable".into(),
                "replay-cache-unavailable".into()
            ),
            "{url} {password}: {}",
            answer.text()
        );
    }
}

#[test]
fn check_config_names_the_token_exchange_problem() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate().unwrap();
    pki.write_to(&dir.path().join("pki")).unwrap();
    portvagt::auth::issuer_key::IssuerKey::generate("k")
        .unwrap()
        .save(&dir.path().join("key"))
        .unwrap();
    let config = |exchange: &str| {
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
[backend]
url = "http://127.0.0.1:1/fhir"
[token_exchange]
issuer = "{PORTVAGT}"
signing_key = "key/issuer.key"
{exchange}
"#
        )
    };
    let check = |text: String| crate::support::check_config(dir.path(), &text);
    let pinned = |path: &str| {
        format!("trusted_sts = [{{ certificate = \"{path}\", issuers = [\"TEST1-NSP-STS\"] }}]")
    };
    let sts = pinned("pki/sts.crt");
    let cases = [
        (pinned("pki/missing.crt"), "token_exchange.trusted_sts"),
        // An ECDSA certificate (the client's) is not an STS signing certificate.
        (pinned("pki/client.crt"), "token_exchange.trusted_sts"),
        // A certificate not pinned to issuer names could sign for any STS.
        (
            "trusted_sts = [\"pki/sts.crt\"]".to_owned(),
            "token_exchange.trusted_sts",
        ),
        (
            "trusted_sts = [{ certificate = \"pki/sts.crt\", issuers = [] }]".to_owned(),
            "token_exchange.trusted_sts",
        ),
        (
            format!("{sts}\ntoken_lifetime = \"2h\""),
            "token_exchange.token_lifetime",
        ),
        (
            format!("{sts}\nredis_url = \"memcached://cache\""),
            "token_exchange.redis_url",
        ),
        (
            format!("{sts}\ntoken_endpoint = \"http://portvagt.test.invalid/token\""),
            "token_exchange.token_endpoint",
        ),
        (
            format!("{sts}\nredis_url = \"rediss://cache\"\n[redis]\npassword_file = \"nowhere\""),
            "redis.password_file",
        ),
        (
            format!("{sts}\n[redis]\nca_file = \"pki/missing-ca.crt\""),
            "redis.ca_file",
        ),
        // Bearer cards (levels 1 and 2) only with the explicit switch.
        (
            format!("{sts}\nmin_authentication_level = 2"),
            "token_exchange.min_authentication_level",
        ),
    ];
    for (exchange, field) in cases {
        let (code, stderr) = check(config(&exchange));
        assert_eq!(code, Some(1), "{exchange}: {stderr}");
        assert!(stderr.contains(field), "{exchange}: {stderr}");
    }
    // Token exchange alone (no [[issuer]]) is a complete configuration.
    let (code, stderr) = check(config(&sts));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(config(&format!(
        "{sts}\nmin_authentication_level = 2\nallow_bearer_assertions = true"
    )));
    assert_eq!(code, Some(0), "{stderr}");
}

/// With several replicas and no Redis, each keeps its own replay cache: `check-config` warns,
/// and `/readyz` stays ready but says so (`warn`, with the reason). One replica: neither does.
#[tokio::test]
async fn replicas_without_a_shared_replay_cache_are_named_by_check_config_and_readiness() {
    for replicas in [1, 3] {
        let gateway = Gateway::start_with(Options {
            server_extra: format!("replicas = {replicas}\n"),
            ..exchange_options(None, "")
        });
        let config = gateway.dir.path().join("portvagt.toml");
        let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let warned = stdout
            .contains("warning: [server] replicas = 3, but [token_exchange] has no redis_url");
        assert_eq!(warned, replicas == 3, "{stdout}");

        let ready = gateway.client().get("/readyz", None).await.unwrap();
        assert_eq!(ready.status, 200, "{}", ready.text());
        let body = ready.json();
        if replicas == 3 {
            assert_eq!(body["status"], "warn", "{body}");
            assert!(
                body["notes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|note| note.as_str().unwrap().contains("own replay cache")),
                "{body}"
            );
        } else {
            assert_eq!(body, serde_json::json!({ "status": "pass" }));
        }
    }
}
