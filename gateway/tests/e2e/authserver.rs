//! A real OAuth authorization server (`oidc-provider`, testbed/authserver) as the issuer: keys by
//! discovery over HTTPS, tokens obtained the way a client app obtains them, key rotation.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use serde_json::Value;

use std::sync::Arc;

use portvagt_certs::DevPki;

use crate::support::{AUDIENCE, Client, Gateway, Options, metric_value};

/// The authorization server process. It shares the gateway's PKI, so a client certificate
/// that authenticates to it (`tls_client_auth`) is the one the gateway sees.
struct AuthServer {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
    pki: Arc<DevPki>,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

/// How a client authenticates at the token endpoint.
#[derive(Clone, Copy)]
enum ClientAuth {
    /// `portvagt-system` with its secret (tokens not bound).
    Secret,
    /// `portvagt-bound` with the organisation certificate (`tls_client_auth`; bound tokens).
    Certificate,
}

/// The resource the authorization server issues opaque tokens for.
const OPAQUE: &str = "urn:portvagt:opaque";

impl AuthServer {
    fn start() -> AuthServer {
        let dir = tempfile::tempdir().unwrap();
        let pki = Arc::new(DevPki::generate().unwrap());
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
            .arg("--client-ca")
            .arg(dir.path().join("ca.crt"))
            .arg("--tls-client")
            .arg(format!(
                "portvagt-bound={}",
                dir.path().join("client.crt").display()
            ))
            .arg("--tls-client")
            .arg(format!(
                "portvagt-gateway-mtls={}",
                dir.path().join("employee.crt").display()
            ))
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
        AuthServer {
            child,
            _stdin: stdin,
            issuer,
            pki,
            addr,
            dir,
        }
    }

    fn client(&self, cert: Option<&portvagt_certs::IssuedCert>) -> Client {
        Client::new(self.addr, &self.pki.ca.certificate().cert_pem, cert)
    }

    async fn post_form(
        &self,
        path: &str,
        form: String,
        auth: ClientAuth,
    ) -> crate::support::Answer {
        let mut request = http::Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("content-type", "application/x-www-form-urlencoded");
        let client = match auth {
            ClientAuth::Secret => {
                use base64::Engine as _;
                let basic = base64::engine::general_purpose::STANDARD
                    .encode("portvagt-system:portvagt-system-secret");
                request = request.header("authorization", format!("Basic {basic}"));
                self.client(None)
            }
            ClientAuth::Certificate => self.client(Some(&self.pki.client)),
        };
        client
            .send(request.body(Full::new(Bytes::from(form))).unwrap())
            .await
            .unwrap()
    }

    /// A client-credentials token for `resource`, obtained as a client app would.
    async fn token_for(&self, resource: &str, scope: &str, auth: ClientAuth) -> String {
        let mut form = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            encode(scope),
            encode(resource)
        );
        if let ClientAuth::Certificate = auth {
            form.push_str("&client_id=portvagt-bound");
        }
        let answer = self.post_form("/token", form, auth).await;
        assert_eq!(answer.status, 200, "token request: {}", answer.text());
        answer.json()["access_token"].as_str().unwrap().to_owned()
    }

    /// A JWT for the gateway's audience from the secret client.
    async fn token(&self, scope: &str) -> String {
        self.token_for(AUDIENCE, scope, ClientAuth::Secret).await
    }

    async fn revoke(&self, token: &str) {
        let answer = self
            .post_form(
                "/token/revocation",
                format!("token={}", encode(token)),
                ClientAuth::Secret,
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }

    async fn rotate(&self) -> String {
        let request = http::Request::builder()
            .method(Method::POST)
            .uri("/admin/rotate")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = self.client(None).send(request).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["kid"].as_str().unwrap().to_owned()
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A gateway trusting this server by discovery, plus `extra` lines in its issuer block.
    fn gateway_with(
        &self,
        min_refresh: &str,
        issuer_lines: &str,
        extra: &str,
        files: Vec<(String, String)>,
    ) -> Gateway {
        Gateway::start_with(Options {
            extra_config: format!(
                "[[issuer]]\nissuer = \"{}\"\naudiences = [\"{AUDIENCE}\", \"{OPAQUE}\"]\ndiscovery = true\nca_file = \"{}\"\nalgorithms = [\"ES256\"]\njwks_min_refresh = \"{min_refresh}\"\n{issuer_lines}\n{extra}\n",
                self.issuer,
                self.ca_file().display()
            ),
            files,
            pki: Some(self.pki.clone()),
            ..Default::default()
        })
    }

    fn gateway(&self, min_refresh: &str) -> Gateway {
        self.gateway_with(min_refresh, "", "", Vec::new())
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
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
    // The other configured issuer (keys from a file) is trusted at the same time.
    let local = gateway.token(serde_json::json!({}));
    assert_eq!(
        gateway
            .client()
            .get("/fhir/Patient/pat-anne", Some(&local))
            .await
            .unwrap()
            .status,
        200
    );
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

    // Traffic with the old token flows throughout the rotation.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (client, before, stop) = (client.clone(), before.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                statuses.push(
                    client
                        .get("/fhir/Patient/pat-anne", Some(&before))
                        .await
                        .unwrap()
                        .status
                        .as_u16(),
                );
            }
            statuses
        })
    };
    let new_kid = server.rotate().await;
    let after = server.token("system/*.rs").await;
    assert_eq!(kid(&after), new_kid);
    assert_ne!(kid(&after), kid(&before));
    // Several requests use the new kid at once: one refresh, and none of them fails.
    let first_uses: Vec<_> = (0..6)
        .map(|_| {
            let (client, after) = (client.clone(), after.clone());
            tokio::spawn(async move {
                client
                    .get("/fhir/Patient/pat-anne", Some(&after))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in first_uses {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    for _ in 0..3 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&after))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let statuses = background.await.unwrap();
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200),
        "{statuses:?}"
    );
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
        let key = portvagt::auth::issuer_key::IssuerKey::generate(&format!("made-up-{i}")).unwrap();
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
    let key = portvagt::auth::issuer_key::IssuerKey::generate("after-outage").unwrap();
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

fn introspection_block(server: &AuthServer, auth: &str) -> String {
    format!(
        "[issuer.introspection]\nurl = \"{}/token/introspection\"\n{auth}\ncache_ceiling = \"2s\"\nnegative_cache = \"30s\"\n",
        server.issuer
    )
}

#[tokio::test]
async fn opaque_tokens_are_introspected_cached_and_revocable() {
    let mut server = AuthServer::start();
    let gateway = server.gateway_with(
        "10s",
        &introspection_block(
            &server,
            "client_id = \"portvagt-gateway\"\nclient_secret_file = \"introspection.secret\"",
        ),
        "",
        vec![(
            "introspection.secret".into(),
            "portvagt-gateway-secret\n".into(),
        )],
    );
    let client = gateway.client();
    let opaque = server
        .token_for(OPAQUE, "system/*.rs", ClientAuth::Secret)
        .await;
    assert!(!opaque.contains('.'), "an opaque token: {opaque}");
    for _ in 0..2 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&opaque))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // The audit trail names an opaque token by its last 32 characters, never the whole.
    let events = gateway.audit_events();
    let tail = &opaque[opaque.len() - 32..];
    assert!(
        events.iter().any(|event| event
            .to_string()
            .contains(&format!("\"urn:ietf:params:oauth:jti:{tail}\""))),
        "{events:?}"
    );
    assert!(
        !events
            .iter()
            .any(|event| event.to_string().contains(&opaque))
    );
    // The granted scope holds for opaque tokens too.
    let write = client
        .send(crate::support::request(
            Method::DELETE,
            "/fhir/Observation/obs-anne-bp",
            Some(&opaque),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(write.status, 403);

    server.revoke(&opaque).await;
    // Within the cache ceiling the cached answer stands; after it, the revocation is seen.
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&opaque))
            .await
            .unwrap()
            .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    for _ in 0..2 {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&opaque))
            .await
            .unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code().as_str()),
            (401, "token-inactive")
        );
        assert!(
            answer.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token")
        );
    }
    // A JWT that cannot be read as one (a member given twice, no `iss`) is refused as a JWT,
    // never shown to the introspection endpoint as if it were opaque: the calls counted below
    // stay two.
    let stranger = portvagt::auth::issuer_key::IssuerKey::generate("k").unwrap();
    let claims = serde_json::json!({ "iss": server.issuer, "sub": "x", "exp": u64::MAX / 2 });
    for (header, claims, code) in [
        (
            r#"{"alg":"ES256","typ":"at+jwt","typ":"JWT"}"#.to_owned(),
            claims.to_string(),
            "duplicate-member",
        ),
        (
            r#"{"alg":"ES256"}"#.to_owned(),
            r#"{"sub":"x"}"#.to_owned(),
            "missing-claim",
        ),
    ] {
        let token = stranger
            .sign_parts(header.as_bytes(), claims.as_bytes())
            .unwrap();
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code().as_str()),
            (401, code),
            "{header} {claims}"
        );
    }
    let metrics = client.get("/metrics", None).await.unwrap().text();
    let value = |line: &str| metric_value(&metrics, line).unwrap_or(0.0);
    assert_eq!(
        value(r#"portvagt_introspection_calls_total{outcome="active"}"#),
        1.0
    );
    assert_eq!(
        value(r#"portvagt_introspection_calls_total{outcome="inactive"}"#),
        1.0
    );
    assert_eq!(
        value(r#"portvagt_introspection_cache_total{result="miss"}"#),
        2.0
    );
    assert_eq!(
        value(r#"portvagt_introspection_cache_total{result="hit"}"#),
        4.0
    );
    assert_eq!(
        value(r#"portvagt_auth_failures_total{reason="token-inactive"}"#),
        2.0
    );

    // With the authorization server gone, an unknown opaque token cannot be judged: 503, not
    // 401 (the token may be good), and the cached refusal still stands.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let answer = client
        .get("/fhir/Patient/pat-anne", Some("not-known-to-anyone"))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (503, "introspection-unavailable")
    );
    assert!(answer.headers.contains_key("retry-after"));
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&opaque))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (401, "token-inactive")
    );
}

/// An issuer whose introspection endpoint has nothing listening, listed FIRST, with its own
/// token prefix: it must never see the real issuer's tokens, whatever the order.
fn other_introspecting_issuer(server: &AuthServer, prefix_line: &str) -> String {
    format!(
        "[[issuer]]\nissuer = \"https://other-as.test.invalid\"\naudiences = [\"{OPAQUE}\"]\nca_file = \"{}\"\n\
         [issuer.introspection]\nurl = \"https://127.0.0.1:9/introspect\"\nclient_id = \"portvagt-gateway\"\n\
         client_secret_file = \"introspection.secret\"\n{prefix_line}\n",
        server.ca_file().display()
    )
}

#[tokio::test]
async fn an_opaque_token_is_shown_to_its_issuer_only_and_concurrent_misses_share_one_call() {
    let server = AuthServer::start();
    let gateway = Gateway::start_with(Options {
        extra_config: format!(
            "{}\n[[issuer]]\nissuer = \"{}\"\naudiences = [\"{OPAQUE}\"]\ndiscovery = true\nca_file = \"{}\"\nalgorithms = [\"ES256\"]\n{}",
            other_introspecting_issuer(&server, "token_prefix = \"other.\""),
            server.issuer,
            server.ca_file().display(),
            introspection_block(
                &server,
                "client_id = \"portvagt-gateway\"\nclient_secret_file = \"introspection.secret\"",
            ),
        ),
        files: vec![(
            "introspection.secret".into(),
            "portvagt-gateway-secret\n".into(),
        )],
        pki: Some(server.pki.clone()),
        ..Default::default()
    });
    let client = gateway.client();
    let opaque = server
        .token_for(OPAQUE, "system/*.rs", ClientAuth::Secret)
        .await;
    assert!(!opaque.starts_with("other."));
    // Many requests with a token the gateway has not seen, at once.
    const AT_ONCE: usize = 40;
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (client, opaque) = (client.clone(), opaque.clone());
            tokio::spawn(async move {
                client
                    .get("/fhir/Patient/pat-anne", Some(&opaque))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let metrics = client.get("/metrics", None).await.unwrap().text();
    let value = |line: &str| metric_value(&metrics, line).unwrap_or(0.0);
    // One call, to the issuer the token belongs to; the other issuer, listed first, was never
    // shown it.
    for (line, expected) in [
        (
            r#"portvagt_introspection_calls_total{outcome="active"}"#,
            1.0,
        ),
        (
            r#"portvagt_introspection_calls_total{outcome="error"}"#,
            0.0,
        ),
        (r#"portvagt_introspection_cache_total{result="miss"}"#, 1.0),
    ] {
        assert_eq!(value(line), expected, "{line}");
    }
    assert_eq!(
        value(r#"portvagt_introspection_cache_total{result="coalesced"}"#)
            + value(r#"portvagt_introspection_cache_total{result="hit"}"#),
        (AT_ONCE - 1) as f64
    );

    // A token with the other issuer's prefix goes there, and only there: it cannot be asked
    // (503), and the real issuer is not asked instead.
    let answer = client
        .get("/fhir/Patient/pat-anne", Some("other.4f7c2a9e"))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (503, "introspection-unavailable")
    );
    let metrics = client.get("/metrics", None).await.unwrap().text();
    let value = |line: &str| metric_value(&metrics, line).unwrap_or(0.0);
    assert_eq!(
        value(r#"portvagt_introspection_calls_total{outcome="error"}"#),
        1.0
    );
    assert_eq!(
        value(r#"portvagt_introspection_calls_total{outcome="inactive"}"#),
        0.0
    );
}

#[test]
fn several_introspecting_issuers_need_a_rule_for_opaque_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::generate().unwrap();
    pki.write_to(&dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("introspection.secret"), "s\n").unwrap();
    let issuer = |name: &str, prefix: &str| {
        format!(
            "[[issuer]]\nissuer = \"https://{name}.test.invalid\"\naudiences = [\"{OPAQUE}\"]\n\
             [issuer.introspection]\nurl = \"https://{name}.test.invalid/introspect\"\nclient_id = \"portvagt\"\n\
             client_secret_file = \"introspection.secret\"\n{prefix}\n"
        )
    };
    let config = |issuers: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"pki/server.crt\"\nkey = \"pki/server.key\"\n\
             client_ca = \"pki/ca.crt\"\n[backend]\nurl = \"http://127.0.0.1:1/fhir\"\n{issuers}"
        )
    };
    let check = |issuers: String| crate::support::check_config(dir.path(), &config(&issuers));
    for (issuers, field) in [
        // Two issuers that would both be asked about every opaque token.
        (
            format!("{}{}", issuer("a", ""), issuer("b", "")),
            "issuer[1].introspection.token_prefix",
        ),
        // A prefix that begins another makes the choice depend on order.
        (
            format!(
                "{}{}",
                issuer("a", "token_prefix = \"at_\""),
                issuer("b", "token_prefix = \"at_b\"")
            ),
            "issuer[1].introspection.token_prefix",
        ),
        (
            issuer("a", "token_prefix = \"\""),
            "issuer[0].introspection.token_prefix",
        ),
    ] {
        let (code, stderr) = check(issuers.clone());
        assert_eq!(code, Some(1), "{issuers}: {stderr}");
        assert!(stderr.contains(field), "{issuers}: {stderr}");
    }
    let (code, stderr) = check(format!(
        "{}{}",
        issuer("a", ""),
        issuer("b", "token_prefix = \"b.\"")
    ));
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn certificate_bound_tokens_and_binding_routes() {
    let server = AuthServer::start();
    let gateway = server.gateway_with(
        "10s",
        "",
        "[[route]]\npath_prefix = \"/fhir/Patient\"\nrequire_certificate_binding = true\n",
        Vec::new(),
    );
    let client = gateway.client();
    let stranger = gateway.client_with(Some(&gateway.pki.employee));
    let bound = server
        .token_for(AUDIENCE, "system/*.rs", ClientAuth::Certificate)
        .await;
    let unbound = server.token("system/*.rs").await;
    let status = |answer: crate::support::Answer| {
        (
            answer.status.as_u16(),
            if answer.status == 200 {
                String::new()
            } else {
                answer.detail_code()
            },
        )
    };

    assert_eq!(
        status(
            client
                .get("/fhir/Patient/pat-anne", Some(&bound))
                .await
                .unwrap()
        ),
        (200, String::new())
    );
    // The same token on another certificate's connection is worthless.
    assert_eq!(
        status(
            stranger
                .get("/fhir/Observation/obs-anne-bp", Some(&bound))
                .await
                .unwrap()
        ),
        (401, "certificate-binding-mismatch".into())
    );
    // The binding route refuses unbound tokens, also at the system level above it.
    for path in [
        "/fhir/Patient/pat-anne",
        "/fhir/Patient?name=Jensen",
        "/fhir?_type=Patient",
    ] {
        assert_eq!(
            status(client.get(path, Some(&unbound)).await.unwrap()),
            (401, "certificate-binding-required".into()),
            "{path}"
        );
    }
    assert_eq!(
        status(
            client
                .get("/fhir/Observation/obs-anne-bp", Some(&unbound))
                .await
                .unwrap()
        ),
        (200, String::new())
    );

    // OIO IDWS REST's Holder-of-key scheme: a bearer token that must be bound.
    let with_scheme = |scheme: &str, token: &str, path: &str| {
        let mut request = crate::support::request(Method::GET, path, None, None);
        request.headers_mut().insert(
            "authorization",
            format!("{scheme} {token}").parse().unwrap(),
        );
        request
    };
    let answer = client
        .send(with_scheme(
            "Holder-of-key",
            &bound,
            "/fhir/Patient/pat-anne",
        ))
        .await
        .unwrap();
    assert_eq!(status(answer), (200, String::new()));
    let answer = client
        .send(with_scheme(
            "Holder-of-key",
            &unbound,
            "/fhir/Observation/obs-anne-bp",
        ))
        .await
        .unwrap();
    assert_eq!(status(answer), (401, "certificate-binding-required".into()));
    let answer = client
        .send(with_scheme("DPoP", &bound, "/fhir/Observation/obs-anne-bp"))
        .await
        .unwrap();
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_request")
    );
    assert_eq!(status(answer), (401, "unsupported-scheme".into()));
}

#[tokio::test]
async fn introspection_with_the_gateways_certificate_and_bound_opaque_tokens() {
    let server = AuthServer::start();
    let dir = server.dir.path().display().to_string();
    let gateway = server.gateway_with(
        "10s",
        &introspection_block(&server, &format!("client_id = \"portvagt-gateway-mtls\"\nclient_cert = \"{dir}/employee.crt\"\nclient_key = \"{dir}/employee.key\"")),
        "",
        Vec::new(),
    );
    let bound = server
        .token_for(OPAQUE, "system/*.rs", ClientAuth::Certificate)
        .await;
    assert!(!bound.contains('.'));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&bound))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let stranger = gateway.client_with(Some(&gateway.pki.employee));
    let answer = stranger
        .get("/fhir/Patient/pat-anne", Some(&bound))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (401, "certificate-binding-mismatch")
    );
}

#[tokio::test]
async fn smart_configuration_and_capability_statement_describe_the_issuer() {
    let server = AuthServer::start();
    let gateway = server.gateway_with(
        "10s",
        "",
        &format!("[smart]\nissuer = \"{}\"\n", server.issuer),
        Vec::new(),
    );
    let client = gateway.client();
    let document = client
        .get("/fhir/.well-known/smart-configuration", None)
        .await
        .unwrap()
        .json();
    assert_eq!(document["issuer"], server.issuer.as_str());
    assert_eq!(
        document["token_endpoint"],
        format!("{}/token", server.issuer)
    );
    assert_eq!(
        document["introspection_endpoint"],
        format!("{}/token/introspection", server.issuer)
    );
    assert_eq!(
        document["revocation_endpoint"],
        format!("{}/token/revocation", server.issuer)
    );
    assert!(
        document["jwks_uri"]
            .as_str()
            .unwrap()
            .starts_with(&server.issuer)
    );
    assert_eq!(
        document["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let capabilities = document["capabilities"].as_array().unwrap();
    assert!(capabilities.iter().any(|c| c == "sso-openid-connect"));
    // This server has no authorization endpoint for apps: no launch is advertised.
    if document.get("authorization_endpoint").is_none() {
        assert!(!capabilities.iter().any(|c| c == "launch-standalone"));
    }
    assert!(
        document["grant_types_supported"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "client_credentials")
    );

    let token = server.token("system/*.rs").await;
    let answer = client.get("/fhir/metadata", Some(&token)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let statement = answer.json();
    let security = &statement["rest"][0]["security"];
    let codes: Vec<&str> = security["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["SMART-on-FHIR", "Certificates"]);
    let uris = &security["extension"][0];
    assert_eq!(
        uris["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert!(uris["extension"].as_array().unwrap().contains(
        &serde_json::json!({ "url": "token", "valueUri": format!("{}/token", server.issuer) })
    ));
    assert_eq!(
        answer.headers["content-length"].to_str().unwrap(),
        answer.body.len().to_string()
    );
}
