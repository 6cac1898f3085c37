//! What operators see: metrics, access log, request ids, probes, shutdown, config checking.

use std::process::Command;

use http::Method;
use serde_json::json;

use crate::support::{Gateway, Options, request};

fn metric_value(metrics: &str, line_prefix: &str) -> f64 {
    crate::support::metric_value(metrics, line_prefix)
        .unwrap_or_else(|| panic!("no metric line {line_prefix}"))
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/Patient.rs" }));
    for _ in 0..3 {
        assert_eq!(
            client
                .get("/fhir/Patient/pat-anne", Some(&token))
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(
        client
            .get("/fhir/Observation/obs-anne-bp", Some(&token))
            .await
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", None)
            .await
            .unwrap()
            .status,
        401
    );
    let expired = gateway.token(json!({ "exp": jsonwebtoken::get_current_timestamp() - 600 }));
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&expired))
            .await
            .unwrap()
            .status,
        401
    );

    let answer = client.get("/metrics", None).await.unwrap();
    assert_eq!(answer.status, 200);
    let metrics = answer.text();
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_requests_total{interaction="read",resource_type="Patient",status_class="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_requests_total{interaction="read",resource_type="Observation",status_class="4xx"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_auth_failures_total{reason="missing-token"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_auth_failures_total{reason="token-expired"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_access_denied_total{reason="insufficient-scope"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"portvagt_request_duration_seconds_count{interaction="read",status_class="2xx"}"#
        ),
        3.0
    );
    assert!(metrics.contains("portvagt_upstream_duration_seconds_bucket"));
}

#[tokio::test]
async fn access_log_line_has_the_fields_and_no_token() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "sub": "mette.kjaer", "client_id": "journalsystem-test" }));
    let answer = gateway
        .client()
        .send({
            let mut r = request(
                Method::GET,
                "/fhir/Patient?identifier=urn:oid:1.2.208.176.1.2%7C1111111118",
                Some(&token),
                None,
            );
            r.headers_mut()
                .insert("x-request-id", "trace-me-123".parse().unwrap());
            r
        })
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.headers["x-request-id"], "trace-me-123");

    let mut line = None;
    for _ in 0..50 {
        line = gateway
            .access_log()
            .into_iter()
            .find(|l| l["request_id"] == "trace-me-123");
        if line.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let line = line.expect("an access-log line for the request");
    assert_eq!(line["principal"], "mette.kjaer");
    assert_eq!(line["client_id"], "journalsystem-test");
    assert_eq!(line["interaction"], "search-type");
    assert_eq!(line["resource_type"], "Patient");
    assert_eq!(line["decision"], "allow");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_status"], 200);
    assert_eq!(line["bytes"].as_u64(), Some(answer.body.len() as u64));
    assert!(
        line["client_subject"]
            .as_str()
            .unwrap()
            .contains("Journalsystem Demo"),
        "{line}"
    );
    assert_eq!(line["client_cvr"], portvagt_certs::DEMO_CVR);
    assert!(line["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(line["upstream_latency_ms"].as_f64().unwrap() > 0.0);
    let raw = gateway.raw_log();
    assert!(
        !raw.contains(&token[token.len() - 30..]),
        "the token was logged"
    );
    assert!(
        !raw.contains("1111111118"),
        "the CPR from the query was logged"
    );
}

#[tokio::test]
async fn generated_request_id_is_returned_and_in_outcomes() {
    let gateway = Gateway::start();
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", None)
        .await
        .unwrap();
    let id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        answer.json()["issue"][0]["diagnostics"],
        format!("request id {id}")
    );
}

#[tokio::test]
async fn probes_and_smart_configuration() {
    let gateway = Gateway::start();
    let client = gateway.client();
    assert_eq!(client.get("/healthz", None).await.unwrap().status, 200);
    assert_eq!(client.get("/readyz", None).await.unwrap().status, 200);
    for path in [
        "/fhir/.well-known/smart-configuration",
        "/.well-known/smart-configuration",
    ] {
        let answer = client.get(path, None).await.unwrap();
        assert_eq!(answer.status, 200, "{path}");
        let document = answer.json();
        assert_eq!(document["issuer"], crate::support::ISSUER);
        assert_eq!(
            document["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert!(
            document["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "permission-v2")
        );
    }
}

#[tokio::test]
async fn admin_listener_serves_probes_without_tls_and_nothing_else() {
    let port = crate::support::free_port();
    let gateway = Gateway::start_with(Options {
        server_extra: format!("admin_listen = \"127.0.0.1:{port}\""),
        ..Default::default()
    });
    let get = |path: &'static str| async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get(path)
            .header("host", "localhost")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        sender.send_request(request).await.unwrap().status()
    };
    assert_eq!(get("/healthz").await, 200);
    assert_eq!(get("/readyz").await, 200);
    assert_eq!(get("/metrics").await, 200);
    assert_eq!(get("/fhir/Patient/pat-anne").await, 404);
    assert_eq!(get("/.well-known/smart-configuration").await, 404);
    // With an admin listener, metrics are not served to certificate holders.
    let metrics = gateway.client().get("/metrics", None).await.unwrap();
    assert_ne!(metrics.status, 200);
    drop(gateway);
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let mut gateway = Gateway::start();
    assert_eq!(
        gateway.client().get("/healthz", None).await.unwrap().status,
        200
    );
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        gateway.raw_log().contains("\"stopped\""),
        "{}",
        gateway.raw_log()
    );
}

#[test]
fn check_config_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portvagt.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "missing/server.crt"
key = "missing/server.key"
client_ca = "missing/ca.crt"

[[issuer]]
issuer = "https://issuer.example"
audiences = ["https://fhir.example/fhir"]
jwks_file = "missing/jwks.json"
algorithms = ["HS256"]

[backend]
url = "ftp://backend"

[citizen]
listen = "127.0.0.1:0"
"#,
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in [
        "tls.cert",
        "issuer[0].algorithms",
        "backend.url",
        "citizen.audiences",
    ] {
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
    // Both listeners read `[tls]`: each problem is still said once.
    for line in stderr.lines() {
        assert_eq!(
            stderr.matches(line).count(),
            1,
            "said twice: {line}\n{stderr}"
        );
    }

    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.lisen"), "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
}

#[tokio::test]
async fn sigterm_under_keep_alive_load_drains_promptly_and_fails_nothing() {
    let mut gateway = Gateway::start();
    let token = gateway.token(serde_json::json!({ "scope": "user/*.rs" }));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = gateway.client();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while let Ok(answer) = client.get("/fhir/Patient/pat-anne", Some(&token)).await {
                statuses.push(answer.status.as_u16());
            }
            statuses
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.terminate();
        (status, gateway)
    })
    .await
    .unwrap()
    .0;
    let drained_in = started.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        drained_in < std::time::Duration::from_secs(3),
        "drained in {drained_in:?} (grace 5 s)"
    );
    let mut answered = 0;
    for task in tasks {
        let statuses = task.await.unwrap();
        answered += statuses.len();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    assert!(answered > 10, "{answered}");
}
