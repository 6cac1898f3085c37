//! A real OAuth authorization server (`oidc-provider`, testbed/authserver) as the issuer: keys by
//! discovery over HTTPS, tokens obtained the way a client app obtains them, key rotation.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::Value;

use crate::support::{AUDIENCE, Client, Gateway, Options, metric_value};

/// The authorization server process, with its own PKI.
struct AuthServer {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
    client: Client,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl AuthServer {
    fn start() -> AuthServer {
        let dir = tempfile::tempdir().unwrap();
        let pki = portvagt_certs::DevPki::generate().unwrap();
        pki.write_to(dir.path()).unwrap();
        let server_dir = portvagt::demo::default_testbed().join("authserver");
        if !server_dir.join("node_modules").exists() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&server_dir)
                .status()
                .unwrap();
            assert!(status.success(), "npm ci for the authorization server");
        }
        let mut child = Command::new("node")
            .arg("server.mjs")
            .args([
                "--issuer-port",
                "0",
                "--watch-stdin",
                "--audience",
                AUDIENCE,
            ])
            .arg("--tls-cert")
            .arg(dir.path().join("server.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("server.key"))
            .current_dir(&server_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let announced: Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let issuer = announced["issuer"].as_str().unwrap().to_owned();
        let port = announced["port"].as_u64().unwrap() as u16;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let client = Client::new(addr, &pki.ca.certificate().cert_pem, None);
        AuthServer {
            child,
            _stdin: stdin,
            issuer,
            client,
            ca_file: dir.path().join("ca.crt"),
            _dir: dir,
        }
    }

    /// A client-credentials token for the gateway's audience.
    async fn token(&self, scope: &str) -> String {
        let form = format!(
            "grant_type=client_credentials&client_id=portvagt-system&client_secret=portvagt-system-secret&scope={}&resource={}",
            scope
                .replace('/', "%2F")
                .replace('*', "%2A")
                .replace(' ', "+"),
            AUDIENCE.replace(':', "%3A").replace('/', "%2F"),
        );
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap();
        let answer = self.client.send(request).await.unwrap();
        assert_eq!(answer.status, 200, "token request: {}", answer.text());
        answer.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn rotate(&self) -> String {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("/admin/rotate")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = self.client.send(request).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["kid"].as_str().unwrap().to_owned()
    }

    fn gateway(&self, min_refresh: &str) -> Gateway {
        Gateway::start_with(Options {
            extra_config: format!(
                "[[issuer]]\nissuer = \"{}\"\naudiences = [\"{AUDIENCE}\"]\ndiscovery = true\nca_file = \"{}\"\nalgorithms = [\"ES256\"]\njwks_min_refresh = \"{min_refresh}\"\n",
                self.issuer,
                self.ca_file.display()
            ),
            ..Default::default()
        })
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokens_from_a_real_authorization_server_are_accepted() {
    let server = AuthServer::start();
    let gateway = server.gateway("10s");
    let token = server.token("system/*.rs").await;
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    // Its scope is what the server granted: no writes.
    let write = gateway
        .client()
        .send(crate::support::request(Method::POST, "/fhir/Observation", Some(&token), Some(serde_json::json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" } }))))
        .await
        .unwrap();
    assert_eq!(write.status, 403);
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, r#"portvagt_jwks_fetches_total{outcome="ok"}"#),
        Some(1.0),
        "one fetch at start, none per request"
    );
}

#[tokio::test]
async fn rotated_keys_are_picked_up_without_a_failed_request() {
    let server = AuthServer::start();
    let gateway = server.gateway("1s");
    let client = gateway.client();
    let before = server.token("system/*.rs").await;
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&before))
            .await
            .unwrap()
            .status,
        200
    );

    let new_kid = server.rotate().await;
    let after = server.token("system/*.rs").await;
    assert_eq!(kid(&after), new_kid);
    assert_ne!(kid(&after), kid(&before));
    // The first request with the new kid makes the gateway refresh once, and succeeds.
    for _ in 0..5 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&after))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // Tokens signed with the old key still verify while the server publishes it.
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&before))
            .await
            .unwrap()
            .status,
        200
    );
    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, r#"portvagt_jwks_fetches_total{outcome="ok"}"#),
        Some(2.0)
    );
}

#[tokio::test]
async fn made_up_kids_cannot_hammer_the_issuer() {
    let server = AuthServer::start();
    let gateway = server.gateway("1h");
    let client = gateway.client();
    // Tokens signed by keys the issuer never had, each with a new kid.
    for i in 0..5 {
        let key = portvagt::auth::dev_token::IssuerKey::generate(&format!("made-up-{i}")).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let token = key
            .sign(&serde_json::json!({ "iss": server.issuer, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "scope": "system/*.rs" }))
            .unwrap();
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code().as_str()),
            (401, "unknown-key")
        );
    }
    let metrics = client.get("/metrics", None).await.unwrap().text();
    // One fetch at start, one forced by the first unknown kid, then rate-limited.
    assert_eq!(
        metric_value(&metrics, r#"portvagt_jwks_fetches_total{outcome="ok"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_jwks_fetches_total{outcome="rate-limited"}"#
        ),
        Some(4.0)
    );
}

#[tokio::test]
async fn keys_held_keep_working_while_the_issuer_is_down() {
    let mut server = AuthServer::start();
    let gateway = server.gateway("1s");
    let client = gateway.client();
    let token = server.token("system/*.rs").await;
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap()
            .status,
        200
    );

    let _ = server.child.kill();
    let _ = server.child.wait();
    // A known key never waits on the issuer.
    for _ in 0..3 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // An unknown kid tries a refresh, which fails; the held keys stay, the token is refused.
    let key = portvagt::auth::dev_token::IssuerKey::generate("after-outage").unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let stranger = key
        .sign(&serde_json::json!({ "iss": server.issuer, "aud": AUDIENCE, "sub": "x", "exp": now + 60, "scope": "system/*.rs" }))
        .unwrap();
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&stranger))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (401, "unknown-key")
    );
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap()
            .status,
        200
    );
    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, r#"portvagt_jwks_fetches_total{outcome="error"}"#),
        Some(1.0)
    );
}
