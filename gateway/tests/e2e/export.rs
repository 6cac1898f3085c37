//! Bulk Data `$export` through the gateway, against the reference backend's implementation:
//! a backend service with a `system/` scope kicks off, polls and downloads only through links
//! the gateway signed for it; nobody else can follow them; every exported patient is audited;
//! user and patient tokens cannot export.

use http::{HeaderValue, Method};
use serde_json::{Value, json};

use crate::support::{Answer, Gateway, backend_url, request};

fn service(gateway: &Gateway, sub: &str, scope: &str) -> String {
    gateway.token(json!({ "sub": sub, "client_id": sub, "scope": scope }))
}

async fn get(gateway: &Gateway, path: &str, token: &str, accept: &'static str) -> Answer {
    let mut request = request(Method::GET, path, Some(token), None);
    request
        .headers_mut()
        .insert("accept", HeaderValue::from_static(accept));
    gateway.client().send(request).await.unwrap()
}

async fn kick_off(gateway: &Gateway, path: &str, token: &str) -> Answer {
    let mut request = request(Method::GET, path, Some(token), None);
    request
        .headers_mut()
        .insert("prefer", HeaderValue::from_static("respond-async"));
    gateway.client().send(request).await.unwrap()
}

/// The path below the gateway's address of a link it handed out.
fn path_of(gateway: &Gateway, url: &str) -> String {
    let origin = gateway.base_url.trim_end_matches("/fhir");
    let path = url
        .strip_prefix(origin)
        .unwrap_or_else(|| panic!("not a link to this gateway: {url}"));
    assert!(path.starts_with("/fhir/_page/"), "not a signed link: {url}");
    path.to_owned()
}

/// Kicks off `path` and polls until the manifest: (status link, manifest).
async fn export(gateway: &Gateway, path: &str, token: &str) -> (String, Value) {
    let answer = kick_off(gateway, path, token).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let status = path_of(
        gateway,
        answer.headers["content-location"].to_str().unwrap(),
    );
    for _ in 0..10 {
        let answer = get(gateway, &status, token, "application/json").await;
        match answer.status.as_u16() {
            202 => continue,
            200 => {
                let text = answer.text();
                assert!(!text.contains(backend_url()), "backend URL leaked: {text}");
                return (status, answer.json());
            }
            other => panic!("status {other}: {}", answer.text()),
        }
    }
    panic!("the export never completed");
}

#[tokio::test]
async fn a_backend_service_exports_through_signed_links_and_every_patient_is_audited() {
    let gateway = Gateway::start();
    let token = service(&gateway, "registry", "system/*.rs");
    let (_, manifest) = export(&gateway, "/fhir/Patient/$export", &token).await;
    assert!(
        manifest["request"]
            .as_str()
            .unwrap()
            .starts_with(&gateway.base_url),
        "{manifest}"
    );
    let outputs = manifest["output"].as_array().unwrap();
    assert!(
        outputs.iter().any(|o| o["type"] == "Observation"),
        "{manifest}"
    );
    for output in outputs {
        let file = path_of(&gateway, output["url"].as_str().unwrap());
        let answer = get(&gateway, &file, &token, "application/fhir+ndjson").await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(
            answer.headers["content-type"]
                .to_str()
                .unwrap()
                .contains("ndjson")
        );
        let lines: Vec<Value> = answer
            .text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines.len() as u64,
            output["count"].as_u64().unwrap(),
            "{output}"
        );
        assert!(lines.iter().all(|r| r["resourceType"] == output["type"]));
        if output["type"] == "Observation" {
            // Every patient in the file is in the audit record of its download.
            let request_id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
            let audited = gateway.audit_events_for(&request_id).to_vec();
            let audited = serde_json::to_string(&audited).unwrap();
            for line in &lines {
                let subject = line["subject"]["reference"].as_str().unwrap();
                assert!(
                    audited.contains(subject),
                    "{subject} not audited: {audited}"
                );
            }
        }
    }
}

#[tokio::test]
async fn nobody_else_follows_an_exports_links_and_the_service_can_cancel() {
    let gateway = Gateway::start();
    let token = service(&gateway, "registry", "system/*.rs");
    let (status, manifest) = export(&gateway, "/fhir/$export?_type=Observation", &token).await;
    let file = path_of(&gateway, manifest["output"][0]["url"].as_str().unwrap());
    let other = service(&gateway, "another-service", "system/*.rs");
    for link in [&status, &file] {
        let answer = get(&gateway, link, &other, "application/json").await;
        assert_eq!(answer.status, 403, "{}", answer.text());
        assert_eq!(answer.detail_code(), "page-link-not-yours");
    }
    // Changed in one character: refused.
    let mut changed = file.clone().into_bytes();
    let at = changed.len() - 3;
    changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
    let answer = get(
        &gateway,
        &String::from_utf8(changed).unwrap(),
        &token,
        "application/fhir+ndjson",
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.text());

    // A DELETE cancels the export (its status link only); a file link is not deleted that way.
    let delete = |path: &str| request(Method::DELETE, path, Some(&token), None);
    let answer = gateway.client().send(delete(&file)).await.unwrap();
    assert_eq!(answer.status, 405, "{}", answer.text());
    assert_eq!(answer.detail_code(), "page-link-method");
    let answer = gateway.client().send(delete(&status)).await.unwrap();
    assert_eq!(answer.status, 202, "{}", answer.text());
    let answer = get(&gateway, &status, &token, "application/json").await;
    assert_eq!(answer.status, 404, "{}", answer.text());
}

#[tokio::test]
async fn only_a_system_scope_covering_what_is_exported_kicks_off() {
    let gateway = Gateway::start();
    let cases = [
        ("user/*.rs", "/fhir/Patient/$export", 403),
        ("system/Observation.rs", "/fhir/$export", 403),
        (
            "system/Observation.rs",
            "/fhir/$export?_type=Observation,Patient",
            403,
        ),
        ("system/*.rs", "/fhir/$export?_elements=id", 403),
        (
            "system/Observation.rs",
            "/fhir/$export?_type=Observation",
            202,
        ),
    ];
    for (scope, path, expected) in cases {
        let token = service(&gateway, "registry", scope);
        let answer = kick_off(&gateway, path, &token).await;
        assert_eq!(answer.status, expected, "{scope} {path}: {}", answer.text());
    }
    // A modifier the backend would not know (and ignore, exporting every type), an added
    // type, and a POST kick-off whose body parameters no link could carry: refused.
    let typed = service(&gateway, "registry", "system/Observation.rs");
    for path in [
        "/fhir/$export?_type:x=Observation",
        "/fhir/$export?_type=Observation&includeAssociatedData=LatestProvenanceResources",
        "/fhir/$export?_type=Observation&handling=lenient",
    ] {
        let answer = kick_off(&gateway, path, &typed).await;
        assert_eq!(answer.status, 403, "{path}: {}", answer.text());
    }
    let mut post = request(
        Method::POST,
        "/fhir/$export?_type=Observation",
        Some(&typed),
        None,
    );
    post.headers_mut()
        .insert("prefer", HeaderValue::from_static("respond-async"));
    let answer = gateway.client().send(post).await.unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());

    let patient = gateway.token(json!({
        "sub": "anne", "client_id": "min-sundhed", "patient": "pat-anne", "scope": "patient/*.rs",
    }));
    let answer = kick_off(&gateway, "/fhir/Patient/$export", &patient).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
}

#[tokio::test]
async fn an_exports_links_outlive_a_short_page_link_lifetime() {
    let gateway = Gateway::start_with(crate::support::Options {
        extra_config: "[paging]\nlink_lifetime = \"1s\"\n".to_owned(),
        ..crate::support::Options::default()
    });
    let token = service(&gateway, "registry", "system/Observation.rs");
    let answer = kick_off(&gateway, "/fhir/$export?_type=Observation", &token).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let status = path_of(
        &gateway,
        answer.headers["content-location"].to_str().unwrap(),
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let mut manifest = None;
    for _ in 0..5 {
        let answer = get(&gateway, &status, &token, "application/json").await;
        assert!(
            answer.status == 200 || answer.status == 202,
            "{}",
            answer.text()
        );
        if answer.status == 200 {
            manifest = Some(answer.json());
            break;
        }
    }
    let manifest = manifest.expect("a manifest");
    // Only the type exported, and its file downloads.
    let outputs = manifest["output"].as_array().unwrap();
    assert!(
        outputs.iter().all(|o| o["type"] == "Observation"),
        "{manifest}"
    );
    let file = path_of(&gateway, outputs[0]["url"].as_str().unwrap());
    let answer = get(&gateway, &file, &token, "application/fhir+ndjson").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(
        answer
            .text()
            .lines()
            .all(|l| l.contains("\"resourceType\":\"Observation\""))
    );
}

/// A status still in progress tells how far the export is in the backend's own words; under
/// citizens' blocks those words may count what the blocks withhold (as a manifest's `count`
/// would), so they do not pass there.
#[tokio::test]
async fn an_exports_progress_is_not_told_under_citizens_blocks() {
    for (extra, told) in [("", true), ("[consent]\n", false)] {
        let gateway = Gateway::start_with(crate::support::Options {
            extra_config: extra.into(),
            ..crate::support::Options::default()
        });
        let token = service(&gateway, "registry", "system/*.rs");
        let answer = kick_off(&gateway, "/fhir/Patient/$export", &token).await;
        assert_eq!(answer.status, 202, "{extra:?}: {}", answer.text());
        let status = path_of(
            &gateway,
            answer.headers["content-location"].to_str().unwrap(),
        );
        // The reference backend's first poll is in progress, with `X-Progress`.
        let answer = get(&gateway, &status, &token, "application/json").await;
        assert_eq!(answer.status, 202, "{extra:?}: {}", answer.text());
        assert_eq!(
            answer.headers.contains_key("x-progress"),
            told,
            "{extra:?}: {:?}",
            answer.headers
        );
        assert!(answer.headers.contains_key("retry-after"), "{extra:?}");
    }
}
