//! Hot reload: a new server certificate, a broken one, rotated issuer keys and changed rules,
//! picked up from the files (as Kubernetes replaces mounted Secrets) and on SIGHUP, while
//! requests keep flowing and none fails.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portvagt::auth::issuer_key::IssuerKey;
use portvagt_certs::DevPki;
use serde_json::json;

use crate::support::{Client, Gateway, Options, metric_value};

/// Replaces a file the way a Secret update does: the new content appears at once.
fn replace(path: &Path, contents: &str) {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, contents).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

async fn metric(gateway: &Gateway, line: &str) -> f64 {
    metric_via(&gateway.client(), line).await
}

async fn metric_via(client: &Client, line: &str) -> f64 {
    let metrics = client.get("/metrics", None).await.unwrap().text();
    metric_value(&metrics, line).unwrap_or(0.0)
}

/// Polls until `check` holds (up to 8 s: two polls of the watcher and then some).
async fn eventually<F: AsyncFnMut() -> bool>(mut check: F) -> bool {
    for _ in 0..80 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_new_server_certificate_is_served_while_requests_keep_succeeding() {
    let gateway = Gateway::start();
    let pki_dir = gateway.dir.path().join("pki");
    let old_ca = gateway.pki.ca.certificate().cert_pem.clone();
    let next = DevPki::generate().unwrap();
    let new_ca = next.ca.certificate().cert_pem.clone();
    let both = format!("{old_ca}{new_ca}");
    let token = gateway.token(json!({ "scope": "user/*.rs" }));

    // Load through the change, by a client that trusts either CA.
    let load_client = Client::new(gateway.addr, &both, Some(&gateway.pki.client));
    let load = tokio::spawn({
        let token = token.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..150 {
                let answer = load_client
                    .get("/fhir/Patient/pat-anne", Some(&token))
                    .await
                    .map(|a| a.status.as_u16())
                    .unwrap_or(0);
                statuses.push(answer);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            statuses
        }
    });

    replace(&pki_dir.join("server.key"), &next.server.key_pem);
    replace(&pki_dir.join("server.crt"), &next.server.cert_pem);
    let new_only = Client::new(gateway.addr, &new_ca, Some(&gateway.pki.client));
    assert!(
        eventually(async || new_only.get("/healthz", None).await.is_ok()).await,
        "the new certificate is served"
    );
    let old_only = Client::new(gateway.addr, &old_ca, Some(&gateway.pki.client));
    assert!(
        old_only.get("/healthz", None).await.is_err(),
        "the old one is not"
    );

    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // (The old CA no longer fits the server certificate: metrics through the new one.)
    assert!(
        metric_via(
            &new_only,
            "portvagt_config_reloads_total{component=\"tls\",outcome=\"ok\"}"
        )
        .await
            >= 1.0
    );
    let expiry = metric_via(
        &new_only,
        "portvagt_certificate_expiry_seconds{certificate=\"server\"}",
    )
    .await;
    assert!(expiry > 300.0 * 86_400.0, "{expiry}");
}

#[tokio::test]
async fn the_citizen_listener_serves_the_new_certificate_too() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"https://minlog.test.portvagt.invalid/fhir\"]\n".into(),
        ..Options::default()
    });
    let citizen = gateway.citizen_addr();
    let next = DevPki::generate().unwrap();
    let new_ca = next.ca.certificate().cert_pem.clone();
    let old_only = Client::new(citizen, &gateway.pki.ca.certificate().cert_pem, None);
    assert_eq!(old_only.get("/healthz", None).await.unwrap().status, 200);
    let pki_dir = gateway.dir.path().join("pki");
    replace(&pki_dir.join("server.key"), &next.server.key_pem);
    replace(&pki_dir.join("server.crt"), &next.server.cert_pem);
    let new_only = Client::new(citizen, &new_ca, None);
    assert!(
        eventually(async || new_only.get("/healthz", None).await.is_ok()).await,
        "the citizen listener serves the new certificate"
    );
    assert!(old_only.get("/healthz", None).await.is_err());
}

#[tokio::test]
async fn a_broken_certificate_file_is_refused_and_the_old_one_keeps_serving() {
    let gateway = Gateway::start();
    replace(
        &gateway.dir.path().join("pki/server.crt"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    );
    assert!(
        eventually(async || {
            metric(
                &gateway,
                "portvagt_config_reloads_total{component=\"tls\",outcome=\"error\"}",
            )
            .await
                >= 1.0
        })
        .await
    );
    assert!(gateway.raw_log().contains("reload refused"));
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn rotated_issuer_keys_and_changed_rules_apply_without_a_restart() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[policy]\nrules_file = \"rules.toml\"\n".into(),
        files: vec![(
            "rules.toml".into(),
            "[[rule]]\nname = \"reads\"\neffect = \"allow\"\ninteractions = [\"read\"]\n".into(),
        )],
        ..Options::default()
    });
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap()
            .status,
        200
    );

    // New rules: reads of Patient denied.
    replace(
        &gateway.dir.path().join("rules.toml"),
        "[[rule]]\nname = \"reads\"\neffect = \"allow\"\ninteractions = [\"read\"]\n\n\
         [[rule]]\nname = \"no patients\"\neffect = \"deny\"\nresource_types = [\"Patient\"]\n",
    );
    assert!(
        eventually(async || {
            let answer = client
                .get("/fhir/Patient/pat-anne", Some(&token))
                .await
                .unwrap();
            answer.status == 403 && answer.detail_code() == "denied-by-rule"
        })
        .await
    );

    // A rotated key: the new one's tokens are accepted, the old one's no longer.
    let rotated = IssuerKey::generate("test-2").unwrap();
    let issuer_dir = gateway.dir.path().join("issuer");
    replace(&issuer_dir.join("jwks.json"), &rotated.jwks());
    let claims = gateway.claims(json!({ "scope": "user/*.rs" }));
    let new_token = rotated.sign(&claims).unwrap();
    assert!(
        eventually(async || {
            client
                .get("/fhir/Observation/obs-bo-bp", Some(&new_token))
                .await
                .unwrap()
                .status
                == 200
        })
        .await
    );
    let old_token = gateway.token(json!({ "scope": "user/*.rs" }));
    assert_eq!(
        client
            .get("/fhir/Observation/obs-bo-bp", Some(&old_token))
            .await
            .unwrap()
            .status,
        401
    );

    // SIGHUP reloads even when no file changed.
    let before = metric(
        &gateway,
        "portvagt_config_reloads_total{component=\"rules\",outcome=\"ok\"}",
    )
    .await;
    Command::new("kill")
        .args(["-HUP", &gateway.child_id().to_string()])
        .status()
        .unwrap();
    assert!(
        eventually(async || {
            metric(
                &gateway,
                "portvagt_config_reloads_total{component=\"rules\",outcome=\"ok\"}",
            )
            .await
                > before
        })
        .await
    );
}

/// The client certificates the gateway presents to its backend and to the audit repository are
/// read again when their files change, without a restart: new connections present the new
/// one.
#[tokio::test]
async fn backend_and_audit_shipper_client_certificates_reload_without_a_restart() {
    use crate::support::{TlsFront, backend_url};
    let pki = std::sync::Arc::new(DevPki::generate().unwrap());
    let backend = TlsFront::start(&pki, backend_url()).await;
    // The shipper's repository: it need not take the events, only see who connects.
    let repository = TlsFront::start(&pki, backend_url()).await;
    let (old, new) = (&pki.gateway, &pki.client);
    let gateway = Gateway::start_with(Options {
        pki: Some(pki.clone()),
        files: vec![
            ("backend.crt".into(), old.cert_pem.clone()),
            ("backend.key".into(), old.key_pem.clone()),
            ("ship.crt".into(), old.cert_pem.clone()),
            ("ship.key".into(), old.key_pem.clone()),
        ],
        backend_url: Some(backend.url.clone()),
        backend_extra: "ca_file = \"pki/ca.crt\"\nclient_cert = \"backend.crt\"\nclient_key = \"backend.key\"\n".into(),
        audit_extra: format!(
            "[audit.ship]\nurl = \"{}\"\nca_file = \"pki/ca.crt\"\nclient_cert = \"ship.crt\"\nclient_key = \"ship.key\"\n",
            repository.url
        ),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let client = gateway.client();
    let read = || async {
        let answer = client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    };
    read().await;
    let last = |front: &TlsFront| front.presented.lock().unwrap().last().cloned();
    assert_eq!(last(&backend).as_ref(), Some(&old.cert_der));
    for _ in 0..100 {
        if last(&repository).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last(&repository).as_ref(), Some(&old.cert_der));

    // Rotated: the key first, as a Secret update brings both at once.
    for (name, pem) in [
        ("backend.key", &new.key_pem),
        ("backend.crt", &new.cert_pem),
        ("ship.key", &new.key_pem),
        ("ship.crt", &new.cert_pem),
    ] {
        replace(&gateway.dir.path().join(name), pem);
    }
    let reloaded = r#"portvagt_config_reloads_total{component="backend_tls",outcome="ok"}"#;
    let shipped = r#"portvagt_config_reloads_total{component="audit_ship_tls",outcome="ok"}"#;
    for _ in 0..100 {
        if metric(&gateway, reloaded).await >= 1.0 && metric(&gateway, shipped).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&gateway, reloaded).await >= 1.0);
    read().await;
    assert_eq!(last(&backend).as_ref(), Some(&new.cert_der));
    // The shipper presents the new one on its next try (it retries after a failed one).
    for _ in 0..200 {
        if last(&repository).as_ref() == Some(&new.cert_der) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last(&repository).as_ref(), Some(&new.cert_der));
}
