//! The command line against a deployment that is not there: every case that runs fails, the
//! ones without inputs are skipped with their reason, all four reports are written, and the
//! exit code says so.

use std::process::Command;

#[test]
fn reports_are_written_and_the_exit_code_follows_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let pki = portvagt_certs::DevPki::generate().unwrap();
    pki.write_to(dir.path()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portvagt-conformance"))
        .args(["--target", "https://127.0.0.1:1/fhir"])
        .arg("--ca")
        .arg(dir.path().join("ca.crt"))
        .arg("--cert")
        .arg(dir.path().join("client.crt"))
        .arg("--key")
        .arg(dir.path().join("client.key"))
        .args(["--token-command", "user=echo not-a-real-token"])
        .args(["--only", "TLS", "--only", "AUTH-01", "--only", "XCHG-01"])
        .arg("--junit")
        .arg(dir.path().join("report.xml"))
        .arg("--json")
        .arg(dir.path().join("report.json"))
        .arg("--markdown")
        .arg(dir.path().join("report.md"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("FAIL TLS-01"), "{stdout}");
    assert!(stdout.contains("skip XCHG-01"), "{stdout}");
    assert!(stdout.contains("skip TLS-03"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    let ids: Vec<&str> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "TLS-01", "TLS-02", "TLS-03", "TLS-04", "TLS-05", "TLS-06", "AUTH-01", "XCHG-01"
        ]
    );
    assert_eq!(json["skipped"], 2);
    let junit = std::fs::read_to_string(dir.path().join("report.xml")).unwrap();
    assert!(junit.contains("<testsuite name=\"portvagt-conformance\" tests=\"8\""));
    let markdown = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(markdown.contains("Result: **FAIL**"));
}
