//! Paging through any backend: the backend here pages the way HAPI FHIR does (`--paging
//! opaque`: `?_getpages=<id>&_getpagesoffset=<n>`, links that say nothing of whose data the
//! next page holds), and a patient-context token pages through a search with the links the
//! gateway hands out (`<base>/_page/<token>`, signed, bound to the caller, expiring), each
//! page checked and audited as the search it continues. A link changed, followed by another
//! client or too late is refused; the backend's own link is never handed out.

use std::sync::OnceLock;

use serde_json::{Value, json};

use http::Method;

use crate::support::{Answer, Gateway, Options, backend_exchange, request};

/// The reference backend paging with opaque links, started once per test process (under
/// `make compat`, the other FHIR server, paging its own way).
fn opaque_backend() -> &'static str {
    if let Some(other) = crate::support::other_backend() {
        return other;
    }
    static BACKEND: OnceLock<portvagt::demo::BackendProcess> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            portvagt::demo::BackendProcess::start_flagged(
                &portvagt::demo::default_testbed(),
                true,
                &["--paging", "opaque"],
            )
            .expect("start the reference backend with opaque paging")
        })
        .base_url()
}

fn gateway_with(extra_config: &str) -> Gateway {
    Gateway::start_with(Options {
        backend_url: Some(opaque_backend().to_owned()),
        extra_config: extra_config.to_owned(),
        ..Options::default()
    })
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// The path of a link the gateway handed out, below its address.
fn path_of(gateway: &Gateway, url: &str) -> String {
    let origin = gateway.base_url.trim_end_matches("/fhir");
    url.strip_prefix(origin)
        .unwrap_or_else(|| panic!("not a link to this gateway: {url}"))
        .to_owned()
}

/// The subjects of a page's Observations (outcome entries a server adds left out).
fn subjects(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["resource"]["resourceType"] == "Observation")
        .map(|e| {
            let subject = e["resource"]["subject"]["reference"].as_str();
            subject.unwrap_or("(no subject)").to_owned()
        })
        .collect()
}

/// How many Observations the backend holds for `query`, asked directly, all on one page.
async fn observations(query: &str) -> usize {
    let (_, direct) = backend_exchange(
        opaque_backend(),
        Method::GET,
        &format!("Observation?{query}_count=1000"),
        None,
    )
    .await;
    subjects(&direct).len()
}

fn anne(gateway: &Gateway) -> String {
    gateway.token(json!({
        "sub": "anne", "client_id": "min-sundhed", "patient": "pat-anne",
        "scope": "patient/Observation.rs",
    }))
}

/// Anne's search of her Observations, one per page: the path of the first page's next link.
async fn annes_next(gateway: &Gateway, token: &str) -> String {
    let first = gateway
        .client()
        .get("/fhir/Observation?_count=1", Some(token))
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    path_of(gateway, &link(&first.json(), "next").expect("a next link"))
}

/// Follows `next` links from `first` until there is none, at most `limit` pages.
async fn all_pages(gateway: &Gateway, token: &str, first: Answer, limit: usize) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut answer = first;
    loop {
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert!(
            !answer.text().contains("_getpages"),
            "the backend's link was handed out: {}",
            answer.text()
        );
        let bundle = answer.json();
        let next = link(&bundle, "next");
        pages.push(bundle);
        let Some(next) = next else { break };
        assert!(pages.len() < limit, "more pages than there are entries");
        assert!(next.contains("/fhir/_page/"), "{next}");
        answer = gateway
            .client()
            .get(&path_of(gateway, &next), Some(token))
            .await
            .unwrap();
    }
    pages
}

#[tokio::test]
async fn a_patient_token_pages_through_a_backend_whose_links_name_only_a_search_id() {
    let gateway = gateway_with("");
    let token = anne(&gateway);
    // No patient named: the gateway narrows the search to Anne, and the backend's next link
    // (`?_getpages=<id>`) no longer says so.
    let first = gateway
        .client()
        .get("/fhir/Observation?_count=1", Some(&token))
        .await
        .unwrap();
    let pages = all_pages(&gateway, &token, first, 10).await;
    let seen: Vec<String> = pages.iter().flat_map(subjects).collect();
    // Every one of Anne's Observations (three in the sample data, more if other tests wrote
    // some), one a page, all hers.
    let hers = observations("subject=Patient/pat-anne&").await;
    assert!(hers >= 3, "{hers}");
    assert_eq!(seen, vec!["Patient/pat-anne"; hers], "{pages:#?}");
    // The pages after the first have a previous link, signed too, and their `self` (the
    // backend's link to that page) is one as well.
    let previous = link(&pages[1], "previous").expect("a previous link");
    assert!(previous.contains("/fhir/_page/"), "{previous}");
    let own = link(&pages[1], "self").expect("a self link");
    assert!(own.contains("/fhir/_page/"), "{own}");
    let again = gateway
        .client()
        .get(&path_of(&gateway, &own), Some(&token))
        .await
        .unwrap();
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["entry"], pages[1]["entry"]);

    // A page in XML, as any answer: `_format` is the one parameter a link takes.
    let next = path_of(&gateway, &link(&pages[0], "next").unwrap());
    let xml = gateway
        .client()
        .get(&format!("{next}?_format=xml"), Some(&token))
        .await
        .unwrap();
    assert_eq!(xml.status, 200, "{}", xml.text());
    assert!(
        xml.text()
            .contains("<Bundle xmlns=\"http://hl7.org/fhir\">"),
        "{}",
        xml.text()
    );
    assert!(xml.text().contains("Patient/pat-anne"), "{}", xml.text());

    // Each page is audited as the search it continues, naming whose data it held.
    let second = link(&pages[0], "next").unwrap();
    let answer = gateway
        .client()
        .get(&path_of(&gateway, &second), Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let request_id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    let events = gateway.audit_events_for(&request_id);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["subtype"][0]["code"], "search-type");
    assert!(
        events[0].to_string().contains("Patient/pat-anne"),
        "{:#?}",
        events[0]
    );
    // ... and its query is the search, not the link.
    let query = events[0]["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|entity| entity["query"].as_str())
        .expect("the query entity");
    let query = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, query).unwrap();
    let query = String::from_utf8(query).unwrap();
    assert!(query.starts_with("/fhir/Observation?_count=1"), "{query}");
}

#[tokio::test]
async fn the_backends_own_link_is_refused_to_a_patient_token_so_the_signed_one_is_needed() {
    let gateway = gateway_with("");
    let token = anne(&gateway);
    // What the backend answers directly: its opaque next link.
    let (_, direct) = backend_exchange(
        opaque_backend(),
        Method::GET,
        "Observation?patient=pat-anne&_count=1",
        None,
    )
    .await;
    let raw = link(&direct, "next").expect("the backend pages");
    let below = raw
        .strip_prefix(opaque_backend())
        .expect("a link below the backend's base");
    if crate::support::other_backend().is_none() {
        // The reference backend's link names only a search id: sent to the gateway it is a
        // system-level search, not Anne's search: refused.
        assert!(below.starts_with("?_getpages="), "{raw}");
        let answer = gateway
            .client()
            .get(&format!("/fhir{below}"), Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 403, "{}", answer.text());
    }
    // Whatever a backend's link looks like, another patient's app gets nothing through it.
    let bo = gateway.token(json!({
        "sub": "bo", "client_id": "min-sundhed", "patient": "pat-bo",
        "scope": "patient/Observation.rs",
    }));
    let answer = gateway
        .client()
        .get(&format!("/fhir{below}"), Some(&bo))
        .await
        .unwrap();
    assert!(
        answer.status == 403 || !answer.text().contains("pat-anne"),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn a_link_changed_borrowed_or_posted_is_refused() {
    let gateway = gateway_with("");
    let token = anne(&gateway);
    let next = annes_next(&gateway, &token).await;

    // One character changed anywhere in the token: not a link this gateway made.
    let (head, token_part) = next.rsplit_once('/').unwrap();
    for at in [0, token_part.len() / 2, token_part.len() - 1] {
        let mut bytes = token_part.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let changed = format!("{head}/{}", String::from_utf8(bytes).unwrap());
        let answer = gateway.client().get(&changed, Some(&token)).await.unwrap();
        assert_eq!(answer.status, 403, "{}", answer.text());
        assert_eq!(answer.detail_code(), "page-link-invalid");
    }

    // Parameters added to a link (another patient, a wider count): refused, not ignored.
    for added in ["patient=pat-bo", "_count=1000", "subject=Patient/pat-bo"] {
        let answer = gateway
            .client()
            .get(&format!("{next}?{added}"), Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{added}: {}", answer.text());
        assert_eq!(answer.detail_code(), "page-link-parameters");
    }

    // Bo's app, Anne's app for another patient, and another client of Anne's: not theirs.
    for claims in [
        json!({ "sub": "bo", "client_id": "min-sundhed", "patient": "pat-bo", "scope": "patient/Observation.rs" }),
        json!({ "sub": "anne", "client_id": "min-sundhed", "patient": "pat-bo", "scope": "patient/Observation.rs" }),
        json!({ "sub": "anne", "client_id": "other-app", "patient": "pat-anne", "scope": "patient/Observation.rs" }),
        json!({ "scope": "user/*.rs" }),
    ] {
        let other = gateway.token(claims.clone());
        let answer = gateway.client().get(&next, Some(&other)).await.unwrap();
        assert_eq!(answer.status, 403, "{claims}: {}", answer.text());
        assert_eq!(answer.detail_code(), "page-link-not-yours", "{claims}");
    }
    // Without a token: who it is cannot be told.
    let answer = gateway.client().get(&next, None).await.unwrap();
    assert_eq!(answer.status, 401, "{}", answer.text());

    // Anne's renewed token (same app, same context) follows it.
    let renewed = anne(&gateway);
    let answer = gateway.client().get(&next, Some(&renewed)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(subjects(&answer.json()), vec!["Patient/pat-anne"]);

    // ... but a token that no longer grants the search does not.
    let narrowed = gateway.token(json!({
        "sub": "anne", "client_id": "min-sundhed", "patient": "pat-anne",
        "scope": "patient/Condition.rs",
    }));
    let answer = gateway.client().get(&next, Some(&narrowed)).await.unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());

    // Followed with anything but GET: not allowed.
    let request = request(Method::POST, &next, Some(&token), None);
    let answer = gateway.client().send(request).await.unwrap();
    assert_eq!(answer.status, 405, "{}", answer.text());
    assert_eq!(answer.detail_code(), "page-link-method");
}

#[tokio::test]
async fn a_link_past_its_lifetime_is_gone() {
    let gateway = gateway_with("[paging]\nlink_lifetime = \"1s\"\n");
    let token = anne(&gateway);
    let next = annes_next(&gateway, &token).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answer = gateway.client().get(&next, Some(&token)).await.unwrap();
    assert_eq!(answer.status, 410, "{}", answer.text());
    assert_eq!(answer.detail_code(), "page-link-expired");
}

#[tokio::test]
async fn a_post_search_and_a_practitioner_page_the_same_way() {
    let gateway = gateway_with("");
    let token = gateway.token(json!({}));
    // A practitioner's search over every patient, in a form body.
    let request = crate::support::request(
        http::Method::POST,
        "/fhir/Observation/_search",
        Some(&token),
        None,
    );
    let (mut parts, _) = request.into_parts();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let request = http::Request::from_parts(
        parts,
        http_body_util::Full::new(bytes::Bytes::from_static(b"_count=4")),
    );
    let first = gateway.client().send(request).await.unwrap();
    let pages = all_pages(&gateway, &token, first, 20).await;
    let seen = pages.iter().flat_map(subjects).count();
    assert_eq!(seen, observations("").await);
    assert!(pages.len() >= 3, "{}", pages.len());

    // Another gateway (another key) does not take this one's links.
    let other = gateway_with("");
    let first = gateway
        .client()
        .get("/fhir/Observation?_count=1", Some(&token))
        .await
        .unwrap();
    let next = path_of(&gateway, &link(&first.json(), "next").unwrap());
    let token = other.token(json!({}));
    let answer = other.client().get(&next, Some(&token)).await.unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "page-link-invalid");
}

#[tokio::test]
async fn a_key_file_keeps_links_good_across_restarts_and_replicas_and_none_does_not() {
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [42u8; 32]);
    let mut keyed = Gateway::start_with(Options {
        backend_url: Some(opaque_backend().to_owned()),
        extra_config: "[paging]\nkey_file = \"paging.key\"\n".to_owned(),
        files: vec![("paging.key".to_owned(), key)],
        ..Options::default()
    });
    let mut unkeyed = gateway_with("");
    for (gateway, survives) in [(&mut keyed, true), (&mut unkeyed, false)] {
        let token = anne(gateway);
        let next = annes_next(gateway, &token).await;
        // Another process with the same configuration, as another replica would be.
        gateway.restart();
        let answer = gateway.client().get(&next, Some(&token)).await.unwrap();
        if survives {
            assert_eq!(answer.status, 200, "{}", answer.text());
            assert_eq!(subjects(&answer.json()), vec!["Patient/pat-anne"]);
        } else {
            assert_eq!(answer.status, 403, "{}", answer.text());
            assert_eq!(answer.detail_code(), "page-link-invalid");
        }
    }
}

#[test]
fn check_config_says_whether_links_outlive_the_process_and_refuses_a_short_key() {
    let gateway = Gateway::start_with(Options {
        backend_url: Some(opaque_backend().to_owned()),
        extra_config: "[paging]\nkey_file = \"paging.key\"\n".to_owned(),
        files: vec![("paging.key".to_owned(), "k".repeat(64))],
        ..Options::default()
    });
    let config = gateway.dir.path().join("portvagt.toml");
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_portvagt"))
            .arg("check-config")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let key = gateway.dir.path().join("paging.key");
    std::fs::write(&key, "0123456789abcdef").unwrap();
    let output = check();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("paging.key_file"), "{stderr}");

    std::fs::write(&key, [9u8; 48]).unwrap();
    let output = check();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("no [paging] key_file"));

    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("key_file = \"paging.key\"", "")).unwrap();
    let output = check();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("no [paging] key_file"),
        "{output:?}"
    );
}
