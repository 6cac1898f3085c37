//! Our signed fixtures, checked by an independent implementation: libxmlsec1's
//! `xmlsec1 --verify` (Debian package `xmlsec1`, installed by `make test`). If our writer's
//! canonical form or signature were wrong, xmlsec1 would say so; a tampered card must fail.

use std::path::Path;
use std::process::Command;

use portvagt_certs::DevPki;
use portvagt_certs::saml::{OiosamlAssertion, SignatureAlgorithm, SosiCard};

/// Runs `xmlsec1 --verify` on `xml` with the STS certificate as the only key.
fn xmlsec_verify(dir: &Path, pki: &DevPki, xml: &str, id_attribute: &str) -> (bool, String) {
    let card = dir.join("card.xml");
    let sts = dir.join("sts.crt");
    let ca = dir.join("ca.crt");
    std::fs::write(&card, xml).unwrap();
    std::fs::write(&sts, &pki.sts.cert_pem).unwrap();
    std::fs::write(&ca, &pki.ca.certificate().cert_pem).unwrap();
    let output = Command::new("xmlsec1")
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(&sts)
        .arg("--trusted-pem")
        .arg(&ca)
        .arg(format!("--id-attr:{id_attribute}"))
        .arg("urn:oasis:names:tc:SAML:2.0:assertion:Assertion")
        .arg(&card)
        .output()
        .expect("xmlsec1 (Debian package xmlsec1) must be installed; `make test` installs it");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn xmlsec1_verifies_our_cards_of_every_kind() {
    let pki = DevPki::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = &pki.client.cert_der;
    let mut sha1_system = SosiCard::system(client);
    sha1_system.algorithm = SignatureAlgorithm::RsaSha1;
    let mut sha1_user = SosiCard::user(client);
    sha1_user.algorithm = SignatureAlgorithm::RsaSha1;
    let mut upper_case_id = SosiCard::user(client);
    upper_case_id.id_attribute = "ID";
    let cards = [
        ("user, level 4, RSA-SHA256", SosiCard::user(client), "id"),
        ("user, level 4, RSA-SHA1", sha1_user, "id"),
        (
            "system, level 3, RSA-SHA256",
            SosiCard::system(client),
            "id",
        ),
        ("system, level 3, RSA-SHA1", sha1_system, "id"),
        ("user, DGWS 1.0_2 ID attribute", upper_case_id, "ID"),
    ];
    for (name, card, id_attribute) in cards {
        let xml = card.sign(&pki.sts).unwrap();
        let (ok, stderr) = xmlsec_verify(dir.path(), &pki, &xml, id_attribute);
        assert!(ok, "{name}: xmlsec1 refused our card: {stderr}");
        let tampered = xml.replace("Journalsystem Demo", "Journalsystem Ond");
        let (ok, _) = xmlsec_verify(dir.path(), &pki, &tampered, id_attribute);
        assert!(!ok, "{name}: xmlsec1 accepted a tampered card");
    }
    let assertion = OiosamlAssertion::physician(client, "https://portvagt.test/", "1111111118");
    let xml = assertion.sign(&pki.sts).unwrap();
    let (ok, stderr) = xmlsec_verify(dir.path(), &pki, &xml, "ID");
    assert!(ok, "OIOSAML: xmlsec1 refused our assertion: {stderr}");
}

#[test]
fn the_cli_writes_cards_that_xmlsec1_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let cli = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_portvagt-certs"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "portvagt-certs {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let pki = pki_dir.to_str().unwrap();
    cli(&["dev", "--out", pki]);
    let card = dir.path().join("card.xml");
    let card_path = card.to_str().unwrap();
    cli(&[
        "sosi-card",
        "--pki",
        pki,
        "--user",
        "--algorithm",
        "rsa-sha1",
        "--out",
        card_path,
    ]);
    let xml = std::fs::read_to_string(&card).unwrap();
    assert!(xml.contains("<saml:AttributeValue>user</saml:AttributeValue>"));
    assert!(xml.contains("xmldsig#rsa-sha1"));
    let output = Command::new("xmlsec1")
        .arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(pki_dir.join("sts.crt"))
        .arg("--trusted-pem")
        .arg(pki_dir.join("ca.crt"))
        .args([
            "--id-attr:id",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        ])
        .arg(&card)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
