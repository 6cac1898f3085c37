//! `portvagt demo` and `portvagt token`, as a newcomer runs them.

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::support::Client;

fn env_value(env: &str, name: &str) -> String {
    env.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{name} missing from demo.env"))
        .to_owned()
}

/// Starts `portvagt demo` on free ports in `dir`, its output to `printed`; returns the process
/// and its `demo.env` once written.
async fn start_demo(dir: &std::path::Path, printed: Stdio) -> (std::process::Child, String) {
    let demo = Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .args(["demo", "--port", "0", "--dir"])
        .arg(dir)
        .stdout(printed)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let env_path = dir.join("demo.env");
    for _ in 0..300 {
        if env_path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let env = std::fs::read_to_string(&env_path).expect("the demo wrote demo.env");
    (demo, env)
}

/// The integrator's one command (`portvagt-conformance --demo DIR`, `make conformance`): every
/// input made from the demo's files, every case runs, and every case passes.
#[tokio::test]
async fn the_conformance_suite_passes_against_the_demo_with_inputs_from_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut demo, _) = start_demo(dir.path(), Stdio::null()).await;
    let settings = portvagt_conformance::demo::settings(dir.path()).unwrap();
    let mut running = Err(anyhow::anyhow!("not yet"));
    for _ in 0..100 {
        running = portvagt_conformance::demo::check_running(&settings.base_url);
        if running.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.unwrap();
    let report = portvagt_conformance::run(settings, &[], |_, _, _| {})
        .await
        .unwrap();
    demo.kill().unwrap();
    let _ = demo.wait();
    let (passed, failed, skipped) = report.counts();
    assert_eq!((failed, skipped), (0, 0), "{}", report.summary());
    assert!(passed >= 100, "{passed} cases");
}

/// A second demo on a port in use stops before it writes anything into its folder.
#[test]
fn a_second_demo_on_a_taken_port_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .args(["demo", "--port", &port, "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is another demo running"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn demo_runs_a_working_deployment_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    // What it prints goes to a file, as when a newcomer keeps its output.
    let printed = tempfile::NamedTempFile::new().unwrap();
    let (mut demo, env) = start_demo(dir.path(), printed.reopen().unwrap().into()).await;
    let url = env_value(&env, "PORTVAGT_URL");
    for file in [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
        "employee.crt",
        "employee.key",
        "revoked.crt",
        "revoked.key",
        "sts.crt",
        "sts.key",
        "crl.pem",
    ] {
        assert!(dir.path().join("pki").join(file).exists(), "{file}");
    }
    let addr = url
        .trim_start_matches("https://")
        .trim_end_matches("/fhir")
        .parse()
        .unwrap();
    let ca = std::fs::read_to_string(dir.path().join("pki/ca.crt")).unwrap();
    let client_cert = portvagt_certs_from_files(dir.path());
    let client = Client::new(addr, &ca, Some(&client_cert));

    let practitioner = env_value(&env, "PRACTITIONER_TOKEN");
    let patient = env_value(&env, "PATIENT_TOKEN");
    let system = env_value(&env, "SYSTEM_TOKEN");
    // Dr. Kjær treats Anne (her practice's list), not Bo.
    let answer = client
        .get("/fhir/Patient/pat-anne", Some(&practitioner))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["name"][0]["family"], "Hansen");
    let answer = client
        .get("/fhir/Patient/pat-bo", Some(&practitioner))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "relationship-required");
    assert_eq!(
        client
            .get("/fhir/Observation?patient=pat-anne", Some(&patient))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client
            .get("/fhir/Observation?patient=pat-bo", Some(&patient))
            .await
            .unwrap()
            .status,
        403
    );
    assert_eq!(
        client
            .get("/fhir/Encounter?patient=pat-carla", Some(&system))
            .await
            .unwrap()
            .status,
        200
    );

    // Carla's block against Dr. Kjær, and the emergency way past it.
    let refused = client
        .get("/fhir/Patient/pat-carla", Some(&practitioner))
        .await
        .unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.detail_code(), "consent-block");
    let emergency = env_value(&env, "EMERGENCY_TOKEN");
    let broken_glass = client
        .send(
            http::Request::get("/fhir/Patient/pat-carla")
                .header("authorization", format!("Bearer {emergency}"))
                .header("x-portvagt-break-glass-reason", "bevidstløs på skadestuen")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(broken_glass.status, 200, "{}", broken_glass.text());

    // Anne's access log shows Dr. Kjær's read of her record (once shipped).
    let read = client
        .get("/fhir/Patient/pat-anne", Some(&practitioner))
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    let mut log = Vec::new();
    for _ in 0..100 {
        let answer = client
            .get("/fhir/AuditEvent", Some(&patient))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        log = answer.json()["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if log
            .iter()
            .any(|entry| entry.to_string().contains("Mette Kjær"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        log.iter()
            .any(|entry| entry.to_string().contains("Mette Kjær")),
        "{log:?}"
    );
    // On the basis of her treatment relationship.
    assert!(
        log.iter().any(|entry| entry
            .to_string()
            .contains("relationship EpisodeOfCare/eoc-anne-laegehuset")),
        "{log:?}"
    );

    // The demo's værdispring into Bo's record is listed for follow-up.
    let mut listed = String::new();
    for _ in 0..100 {
        let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
            .args(["audit", "follow-up"])
            .arg(dir.path().join("audit"))
            .output()
            .unwrap();
        assert!(output.status.success());
        listed = String::from_utf8_lossy(&output.stdout).into_owned();
        if listed.contains("Patient/pat-bo") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The nurse's emergency read of Anne too: she has no relationship with Anne either.
    let accesses: Vec<serde_json::Value> = listed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let bo = accesses
        .iter()
        .find(|access| access["patient"] == "Patient/pat-bo")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(bo["who"], "Mette Kjær", "{listed}");
    assert_eq!(bo["authorization_id"], "NS363", "{listed}");
    assert_eq!(bo["reason"], "Indlagt akut, kan ikke svare", "{listed}");
    assert!(
        accesses
            .iter()
            .any(|access| access["patient"] == "Patient/pat-anne" && access["who"] == "Jonas Holm"),
        "{listed}"
    );

    // The citizen listener: no client certificate; Anne's own token reads her log there,
    // with the demo's sample accesses: the nurse she blocked, refused, then breaking the glass.
    let citizen_url = env_value(&env, "PORTVAGT_CITIZEN_URL");
    let citizen_addr = citizen_url
        .trim_start_matches("https://")
        .trim_end_matches("/fhir")
        .parse()
        .unwrap();
    assert_eq!(
        env_value(&env, "PORTVAGT_MINLOG_URL"),
        citizen_url.replace("/fhir", "/minlog/")
    );
    let browser = Client::new(citizen_addr, &ca, None);
    let citizen = env_value(&env, "CITIZEN_TOKEN");
    // Each listener takes the tokens for its own audience only.
    assert_eq!(
        browser
            .get("/fhir/AuditEvent", Some(&patient))
            .await
            .unwrap()
            .detail_code(),
        "wrong-audience"
    );
    let mut seen = String::new();
    for _ in 0..100 {
        let answer = browser
            .get("/fhir/AuditEvent", Some(&citizen))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        seen = answer.text();
        if seen.contains("BTG") && seen.matches("Jonas Holm").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("Bevidstløs ved indlæggelse"), "{seen}");
    assert_eq!(
        browser
            .get("/fhir/Patient/pat-anne", Some(&citizen))
            .await
            .unwrap()
            .detail_code(),
        "citizen-listener"
    );
    assert_eq!(browser.get("/minlog/", None).await.unwrap().status, 200);

    // The DGWS migration path: the demo's SOSI card, exchanged once, reads a patient.
    let card = std::fs::read(env_value(&env, "SOSI_CARD")).unwrap();
    let token_url: http::Uri = env_value(&env, "PORTVAGT_TOKEN_URL").parse().unwrap();
    let form = format!(
        "saml-token={}",
        base64::engine::general_purpose::STANDARD
            .encode(card)
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let exchange = http::Request::post(token_url.path())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(form)))
        .unwrap();
    let answer = client.send(exchange.clone()).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let exchanged = answer.json()["access_token"].as_str().unwrap().to_owned();
    let read = client
        .send(
            http::Request::get("/fhir/Patient/pat-anne")
                .header("authorization", format!("Holder-of-key {exchanged}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(
        client.send(exchange).await.unwrap().status,
        400,
        "replayed card"
    );

    // `portvagt token` mints from the same issuer.
    let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .args([
            "token",
            "--sub",
            "lise.holm",
            "--scope",
            "user/Condition.rs",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(
        client
            .get("/fhir/Condition?patient=pat-bo", Some(&minted))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client
            .get("/fhir/Patient/pat-bo", Some(&minted))
            .await
            .unwrap()
            .status,
        403
    );

    // While it runs: the audit trail is sealed and reaches its anchor in the audit repository
    // (the command the demo prints).
    let config = std::fs::read_to_string(dir.path().join("portvagt.toml")).unwrap();
    let repository = config
        .split("[audit.ship]")
        .nth(1)
        .and_then(|table| table.split("url = \"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("the demo ships its audit trail")
        .to_owned();
    let mut shipped = String::new();
    for _ in 0..100 {
        let verify = Command::new(env!("CARGO_BIN_EXE_portvagt"))
            .args(["audit", "verify"])
            .arg(dir.path().join("audit"))
            .arg("--jwks")
            .arg(dir.path().join("audit-seal/seal-jwks.json"))
            .args(["--repository", &repository, "--repository-ca"])
            .arg(dir.path().join("pki/ca.crt"))
            .output()
            .unwrap();
        shipped = String::from_utf8_lossy(&verify.stdout).into_owned();
        if verify.status.success() && shipped.contains("reaches the anchor") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shipped.contains("reaches the anchor"), "{shipped}");

    Command::new("kill")
        .arg("-INT")
        .arg(demo.id().to_string())
        .status()
        .unwrap();
    let mut exited = None;
    for _ in 0..100 {
        exited = demo.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = exited.expect("the demo stops on Ctrl-C");
    assert!(status.success(), "{status:?}");
    // What it printed to a file: no terminal colour codes, and every command runnable as
    // printed from the checkout (no bare `portvagt`, which is not on the PATH).
    let printed = std::fs::read_to_string(printed.path()).unwrap();
    assert!(printed.contains("Portvagt demo is running"), "{printed}");
    assert!(
        !printed.contains('\u{1b}'),
        "colour codes in a file: {printed}"
    );
    for line in printed.lines() {
        let command = line.trim_start().trim_start_matches('`');
        assert!(
            !command.starts_with("portvagt "),
            "not runnable as printed: {line}"
        );
        assert!(
            !line.contains("with `portvagt "),
            "not runnable as printed: {line}"
        );
    }
    assert!(
        client.get("/healthz", None).await.is_err(),
        "the gateway still answers after Ctrl-C"
    );
    // The command the demo prints proves the audit trail complete: sealed, closed on Ctrl-C.
    let verify = Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .args(["audit", "verify"])
        .arg(dir.path().join("audit"))
        .arg("--jwks")
        .arg(dir.path().join("audit-seal/seal-jwks.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{stdout}");
    assert!(stdout.contains("closed cleanly"), "{stdout}");
}

fn portvagt_certs_from_files(dir: &std::path::Path) -> portvagt_certs::IssuedCert {
    let cert_pem = std::fs::read_to_string(dir.join("pki/client.crt")).unwrap();
    let key_pem = std::fs::read_to_string(dir.join("pki/client.key")).unwrap();
    portvagt_certs::IssuedCert::from_pem(&cert_pem, &key_pem).unwrap()
}
