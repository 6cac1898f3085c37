//! Verified identity to the backend (`[backend.identity]`): the gateway signs who acted into
//! `X-Portvagt-Identity` on each request it forwards; the reference backend, started to check
//! it against the key the gateway publishes, records the actor of a write as a Provenance; an
//! assertion that is forged, replayed, expired or for another backend is refused by the backend;
//! one a client sends is never passed on by the gateway.

use std::sync::OnceLock;
use std::time::Duration;

use http::Method;
use portvagt::backend::identity::{
    Actor, ActorClaims, ForwardedBody, IDENTITY_HEADER, IDENTITY_TYPE, IdentityAsserter,
};
use portvagt::config::IdentityAssertionConfig;
use portvagt::issuer_key::IssuerKey;
use serde_json::{Value, json};

use crate::support::{AUDIENCE, Gateway, Options, backend_exchange_with, request};

/// The backend's audience for assertions.
const BACKEND_AUDIENCE: &str = "urn:portvagt:testbed";

/// The key, the gateway's admin port (where the backend fetches the key) and the backend
/// checking assertions, made once per test process.
struct Setup {
    key: IssuerKey,
    admin_port: u16,
    backend: portvagt::demo::BackendProcess,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let key = IssuerKey::generate("portvagt-identity-test").unwrap();
        let admin_port = crate::support::free_port();
        let jwks = format!("http://127.0.0.1:{admin_port}/.well-known/portvagt-identity-jwks.json");
        let backend = portvagt::demo::BackendProcess::start_flagged(
            &portvagt::demo::default_testbed(),
            true,
            &[
                "--identity-jwks",
                &jwks,
                "--identity-issuer",
                AUDIENCE,
                "--identity-audience",
                BACKEND_AUDIENCE,
            ],
        )
        .expect("start the reference backend checking identity assertions");
        Setup {
            key,
            admin_port,
            backend,
        }
    })
}

/// A gateway in front of the checking backend; with `identity`, it asserts who acts and
/// publishes its key on the admin port the backend fetches it from (one such gateway at a
/// time: the port is the backend's).
fn gateway(identity: bool) -> Gateway {
    let setup = setup();
    let (backend_extra, server_extra) = if identity {
        (
            format!(
                "[backend.identity]\nsigning_key = \"identity.key\"\n\
                 key_id = \"portvagt-identity-test\"\naudience = \"{BACKEND_AUDIENCE}\"\n"
            ),
            format!("admin_listen = \"127.0.0.1:{}\"", setup.admin_port),
        )
    } else {
        (String::new(), String::new())
    };
    Gateway::start_with(Options {
        backend_url: Some(setup.backend.base_url().to_owned()),
        server_extra: format!("public_base_url = \"{AUDIENCE}\"\n{server_extra}"),
        backend_extra,
        files: vec![("identity.key".into(), setup.key.pem().to_owned())],
        ..Options::default()
    })
}

fn observation(marker: &str) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "code": { "text": marker },
        "subject": { "reference": "Patient/pat-bo" },
        "valueQuantity": { "value": 64, "unit": "/min" },
    })
}

/// Where the tests write on the backend directly.
const WRITE_TARGET: &str = "/fhir/R4/Observation";

/// The marker of the Observation the tests write straight to the backend.
const DIRECT: &str = "identity-direct";

/// An assertion made as the gateway makes them, with its key, for `audience`, for a `method`
/// request to [`WRITE_TARGET`] with the Observation `marker` as its body (a `POST`).
fn assertion_for(key_pem: &str, audience: &str, method: &str, marker: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k.pem"), key_pem).unwrap();
    let asserter = IdentityAsserter::new(
        &IdentityAssertionConfig {
            signing_key: dir.path().join("k.pem"),
            key_id: Some("portvagt-identity-test".into()),
            lifetime: Duration::from_secs(60),
            audience: Some(audience.into()),
        },
        "backend",
        "unused",
    )
    .unwrap();
    let body = (method == "POST")
        .then(|| ForwardedBody(bytes::Bytes::from(observation(marker).to_string())).sha256());
    let actor = Actor {
        subject: "intruder",
        name: Some("Someone Else"),
        body_sha256: body.as_deref(),
        ..Actor::default()
    };
    asserter
        .assert(
            &ActorClaims::new(std::sync::Arc::from(AUDIENCE), &actor),
            method,
            WRITE_TARGET,
        )
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// [`assertion_for`] the direct write.
fn assertion(key_pem: &str, audience: &str, method: &str) -> String {
    assertion_for(key_pem, audience, method, DIRECT)
}

async fn provenance_of(target: &str) -> Vec<Value> {
    let (status, bundle) = backend_exchange_with(
        setup().backend.base_url(),
        Method::GET,
        &format!("Provenance?target={target}"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|entry| entry["resource"].clone())
        .collect()
}

#[tokio::test]
async fn the_backend_records_the_actor_the_gateway_asserts() {
    let gateway = gateway(true);
    let client = gateway.client();
    let token = gateway.token(json!({
        "scope": "user/*.cruds", "name": "Mette Kjær", "role": "7170",
        "authorization_id": "NS363", "purpose_of_use": "TREATMENT", "client_id": "journal",
    }));
    // The key is published where the backend fetches it, on the admin listener.
    let published = {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", setup().admin_port))
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let answer = sender
            .send_request(
                http::Request::get("/.well-known/portvagt-identity-jwks.json")
                    .header("host", "localhost")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    assert_eq!(published, json!({ "keys": [setup().key.jwk()] }));

    // A read carries an assertion too, which the backend checks.
    let read = client
        .get("/fhir/Patient/pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(read.status, 200, "{}", read.text());

    // A client's own assertion, for someone else, is not what the backend sees.
    let forged = assertion(setup().key.pem(), BACKEND_AUDIENCE, "POST");
    let mut create = request(
        Method::POST,
        "/fhir/Observation",
        Some(&token),
        Some(observation("identity-recorded")),
    );
    create
        .headers_mut()
        .insert(IDENTITY_HEADER, forged.parse().unwrap());
    let created = client.send(create).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let request_id = created.headers["x-request-id"].to_str().unwrap().to_owned();
    let records = provenance_of(&format!("Observation/{id}")).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let agent = &records[0]["agent"][0];
    assert_eq!(agent["who"]["display"], "Mette Kjær");
    assert_eq!(agent["who"]["identifier"]["value"], "NS363");
    assert_eq!(records[0]["reason"][0]["text"], "TREATMENT");
    let extensions = records[0]["extension"].to_string();
    assert!(extensions.contains(&request_id), "{extensions}");
    assert!(extensions.contains("journal"), "{extensions}");

    // Straight to the backend (the gateway still publishing its key):
    the_backend_refuses_assertions_that_are_forged_replayed_expired_or_for_another().await;
    // The backend now holds the key, and takes a good assertion (shown just above): one a
    // client sends through a gateway is stripped all the same.
    a_clients_assertion_never_reaches_the_backend().await;
}

async fn a_clients_assertion_never_reaches_the_backend() {
    // This gateway asserts nothing: a client's header, though well signed, is stripped, so the
    // backend sees a write without an assertion and refuses it.
    let gateway = gateway(false);
    let token = gateway.token(json!({ "scope": "user/*.cruds" }));
    // Made for exactly the write the client sends: only stripping keeps it from the backend.
    let forged = assertion_for(
        setup().key.pem(),
        BACKEND_AUDIENCE,
        "POST",
        "identity-stripped",
    );
    let mut create = request(
        Method::POST,
        "/fhir/Observation",
        Some(&token),
        Some(observation("identity-stripped")),
    );
    create
        .headers_mut()
        .insert(IDENTITY_HEADER, forged.parse().unwrap());
    let answer = gateway.client().send(create).await.unwrap();
    assert_ne!(answer.status, 201, "{}", answer.text());
    assert!(!answer.text().contains("intruder"), "{}", answer.text());
}

async fn the_backend_refuses_assertions_that_are_forged_replayed_expired_or_for_another() {
    let base = setup().backend.base_url();
    let post = async |headers: &[(&str, &str)]| {
        backend_exchange_with(
            base,
            Method::POST,
            "Observation",
            headers,
            Some(&observation(DIRECT)),
        )
        .await
        .0
    };
    // None at all.
    assert_eq!(post(&[]).await, 401);
    // Signed by another key under the same kid.
    let other = IssuerKey::generate("portvagt-identity-test").unwrap();
    let forged = assertion(other.pem(), BACKEND_AUDIENCE, "POST");
    assert_eq!(post(&[(IDENTITY_HEADER, &forged)]).await, 401);
    // For another backend.
    let elsewhere = assertion(setup().key.pem(), "urn:another-backend", "POST");
    assert_eq!(post(&[(IDENTITY_HEADER, &elsewhere)]).await, 401);
    // Expired: as the gateway makes them, two minutes old.
    let mut claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            good_claims(),
        )
        .unwrap(),
    )
    .unwrap();
    let now = claims["iat"].as_u64().unwrap();
    claims["iat"] = json!(now - 180);
    claims["nbf"] = json!(now - 180);
    claims["exp"] = json!(now - 120);
    let expired = setup().key.sign_typed(&claims, IDENTITY_TYPE).unwrap();
    assert_eq!(post(&[(IDENTITY_HEADER, &expired)]).await, 401);
    // A good one is taken once; the same again is a replay.
    let good = assertion(setup().key.pem(), BACKEND_AUDIENCE, "POST");
    assert_eq!(post(&[(IDENTITY_HEADER, &good)]).await, 201);
    assert_eq!(post(&[(IDENTITY_HEADER, &good)]).await, 401);
    // Tampered: the payload of one, the signature of another.
    let fresh = assertion(setup().key.pem(), BACKEND_AUDIENCE, "POST");
    let parts: Vec<&str> = fresh.split('.').collect();
    let theirs: Vec<&str> = forged.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], theirs[1], parts[2]);
    assert_eq!(post(&[(IDENTITY_HEADER, &spliced)]).await, 401);
    // Made for another request (a read), used for a write.
    let read = assertion(setup().key.pem(), BACKEND_AUDIENCE, "GET");
    assert_eq!(post(&[(IDENTITY_HEADER, &read)]).await, 401);
    // Made for this write's target, but for another body.
    let mut claims = decoded(&assertion(setup().key.pem(), BACKEND_AUDIENCE, "POST"));
    claims["body_sha256"] = json!("47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    let other_body = setup().key.sign_typed(&claims, IDENTITY_TYPE).unwrap();
    assert_eq!(post(&[(IDENTITY_HEADER, &other_body)]).await, 401);
}

/// The claims of an assertion.
fn decoded(assertion: &str) -> Value {
    let payload = assertion.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap()
}

/// The payload part of a fresh assertion for the backend.
fn good_claims() -> String {
    assertion(setup().key.pem(), BACKEND_AUDIENCE, "POST")
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned()
}
