//! Several backends: one behind its own FHIR base on the gateway (`/fhir/second`), one taking a
//! resource type under the main base, and one reached over TLS with backend mTLS (a small TLS
//! server of the test's own, trusting the dev CA: the reference backend speaks plain HTTP).

use std::sync::Arc;

use http::Method;
use portvagt::demo::BackendProcess;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{Gateway, Options, metric_value};

async fn backend_put(base: &str, path: &str, body: Value) {
    let (status, answer) =
        crate::support::backend_exchange(base, Method::PUT, path, Some(&body)).await;
    assert!(status.is_success(), "{status}: {answer}");
}

#[tokio::test]
async fn requests_go_to_the_backend_of_their_base_or_resource_type() {
    let second = BackendProcess::start(&portvagt::demo::default_testbed(), false).unwrap();
    backend_put(
        second.base_url(),
        "Patient/only-second",
        json!({ "resourceType": "Patient", "id": "only-second" }),
    )
    .await;
    backend_put(
        second.base_url(),
        "Organization/org-only-second",
        json!({ "resourceType": "Organization", "id": "org-only-second", "name": "Anden" }),
    )
    .await;
    let url = second.base_url();
    let gateway = Gateway::start_with(Options {
        extra_config: format!(
            "[[upstream]]\nname = \"second\"\npath_prefix = \"/fhir/second\"\n\
             [upstream.backend]\nurl = \"{url}\"\n\n\
             [[upstream]]\nname = \"organisations\"\nresource_types = [\"Organization\"]\n\
             [upstream.backend]\nurl = \"{url}\"\n"
        ),
        ..Options::default()
    });
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));

    let there = client
        .get("/fhir/second/Patient/only-second", Some(&token))
        .await
        .unwrap();
    assert_eq!(there.status, 200, "{}", there.text());
    let not_here = client
        .get("/fhir/Patient/only-second", Some(&token))
        .await
        .unwrap();
    assert_eq!(not_here.status, 404);
    // URLs in answers name the route's own base on the gateway.
    let search = client
        .get("/fhir/second/Patient?_id=only-second", Some(&token))
        .await
        .unwrap();
    let full_url = search.json()["entry"][0]["fullUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        full_url,
        format!("{}/second/Patient/only-second", gateway.base_url)
    );

    let organisation = client
        .get("/fhir/Organization/org-only-second", Some(&token))
        .await
        .unwrap();
    assert_eq!(organisation.status, 200, "{}", organisation.text());
    // Other types under the main base still go to the main backend.
    let patient = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(patient.status, 200);

    let metrics = client.get("/metrics", None).await.unwrap().text();
    for backend in ["second", "organisations", "default"] {
        assert!(
            metric_value(
                &metrics,
                &format!(
                    "portvagt_upstream_duration_seconds_count{{backend=\"{backend}\",status_class=\"2xx\"}}"
                )
            )
            .is_some_and(|count| count >= 1.0),
            "{backend}"
        );
    }
}

/// A TLS backend that requires a client certificate from the dev CA and answers every request
/// with one Patient.
async fn mtls_backend(pki: &portvagt_certs::DevPki) -> String {
    let acceptor = crate::support::mtls_acceptor(pki);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}/fhir",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                let body = json!({ "resourceType": "Patient", "id": "over-tls" }).to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test]
async fn a_backend_over_tls_with_backend_mtls() {
    let pki = Arc::new(portvagt_certs::DevPki::generate().unwrap());
    let url = mtls_backend(&pki).await;
    let upstream = |with_identity: bool| {
        let identity = if with_identity {
            "client_cert = \"pki/client.crt\"\nclient_key = \"pki/client.key\"\n"
        } else {
            ""
        };
        format!(
            "[[upstream]]\nname = \"secure\"\npath_prefix = \"/fhir/secure\"\n\
             [upstream.backend]\nurl = \"{url}\"\nca_file = \"pki/ca.crt\"\nretries = 0\n{identity}"
        )
    };
    let gateway = Gateway::start_with(Options {
        pki: Some(pki.clone()),
        extra_config: upstream(true),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/secure/Patient/over-tls", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["id"], "over-tls");

    // Without the client certificate the backend refuses the handshake: 502, nothing leaked.
    let gateway = Gateway::start_with(Options {
        pki: Some(pki),
        extra_config: upstream(false),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = gateway
        .client()
        .get("/fhir/secure/Patient/over-tls", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 502, "{}", answer.text());
}

#[tokio::test]
async fn routes_are_reloaded_from_the_config_file_and_a_broken_one_is_refused() {
    let second = BackendProcess::start(&portvagt::demo::default_testbed(), false).unwrap();
    backend_put(
        second.base_url(),
        "Patient/only-second",
        json!({ "resourceType": "Patient", "id": "only-second" }),
    )
    .await;
    let gateway = Gateway::start();
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let path = "/fhir/second/Patient/only-second";
    assert_eq!(client.get(path, Some(&token)).await.unwrap().status, 404);

    let config_path = gateway.dir.path().join("portvagt.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let with_route = format!(
        "{config}\n[[upstream]]\nname = \"second\"\npath_prefix = \"/fhir/second\"\n\
         [upstream.backend]\nurl = \"{}\"\n",
        second.base_url()
    );
    std::fs::write(&config_path, &with_route).unwrap();
    let mut status = 0;
    for _ in 0..80 {
        status = client
            .get(path, Some(&token))
            .await
            .unwrap()
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the new route is in force");

    // A broken file: refused, the routes in force stay.
    std::fs::write(
        &config_path,
        format!("{with_route}\n[[upstream]]\nname = 1\n"),
    )
    .unwrap();
    let mut refused = 0.0;
    for _ in 0..80 {
        let metrics = client.get("/metrics", None).await.unwrap().text();
        refused = metric_value(
            &metrics,
            "portvagt_config_reloads_total{component=\"routes\",outcome=\"error\"}",
        )
        .unwrap_or(0.0);
        if refused >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused >= 1.0);
    assert_eq!(client.get(path, Some(&token)).await.unwrap().status, 200);
}
