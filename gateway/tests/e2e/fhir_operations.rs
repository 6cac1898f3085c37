//! The declared operations end to end, against the reference backend (which implements
//! `$lastn`, `$meta` and `$document`): a search by another name is pinned and narrowed like a
//! search, an operation on an instance reads the instance first under a patient-context scope,
//! a document's entries are checked like a searchset's, and the operator's `[[operation]]`
//! rows come before the built-in ones.

use http::Method;
use serde_json::{Value, json};

use crate::support::{Gateway, Options, backend_send, backend_url};

fn anne(gateway: &Gateway) -> String {
    gateway.token(json!({
        "sub": "anne", "client_id": "min-sundhed", "patient": "pat-anne", "scope": "patient/*.rs",
    }))
}

fn subjects(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["subject"]["reference"].as_str())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn lastn_is_a_search_pinned_and_narrowed_to_the_patient() {
    let gateway = Gateway::start();
    let token = anne(&gateway);
    let client = gateway.client();
    // No patient named: narrowed to Anne, every entry hers.
    let answer = client
        .get("/fhir/Observation/$lastn", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = subjects(&answer.json());
    assert!(!seen.is_empty(), "{}", answer.text());
    assert!(seen.iter().all(|s| s == "Patient/pat-anne"), "{seen:?}");
    // Another patient named, in any spelling: refused.
    for query in [
        "patient=pat-bo",
        "subject=Patient/pat-bo",
        "subject:Patient=pat-bo",
        "performer=Patient/pat-bo",
    ] {
        let answer = client
            .get(&format!("/fhir/Observation/$lastn?{query}"), Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 403, "{query}: {}", answer.text());
        assert_eq!(answer.detail_code(), "outside-compartment", "{query}");
    }
    // A practitioner reads anyone's.
    let practitioner = gateway.token(json!({ "scope": "user/Observation.rs" }));
    let answer = client
        .get(
            "/fhir/Observation/$lastn?patient=pat-bo",
            Some(&practitioner),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let seen = subjects(&answer.json());
    assert!(seen.iter().all(|s| s == "Patient/pat-bo") && !seen.is_empty());
    // Granted by search, not by read.
    let reader = gateway.token(json!({ "scope": "user/Observation.r" }));
    let answer = client
        .get("/fhir/Observation/$lastn?patient=pat-bo", Some(&reader))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
}

#[tokio::test]
async fn meta_of_an_instance_reads_the_instance_first_under_a_patient_scope() {
    let gateway = Gateway::start();
    let token = anne(&gateway);
    let client = gateway.client();
    for own in ["Observation/obs-anne-bp", "Patient/pat-anne"] {
        let answer = client
            .get(&format!("/fhir/{own}/$meta"), Some(&token))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{own}: {}", answer.text());
        assert_eq!(answer.json()["resourceType"], "Parameters");
    }
    // Bo's: the answer (a Parameters) would not say whose it is; the instance read first does.
    for other in ["Observation/obs-bo-bp", "Patient/pat-bo"] {
        let answer = client
            .get(&format!("/fhir/{other}/$meta"), Some(&token))
            .await
            .unwrap();
        let expected = if other.starts_with("Patient/") {
            // Another Patient by id is refused before anything is read.
            (403, "outside-compartment")
        } else {
            // Another patient's instance, read first: as if missing.
            (404, "not-found")
        };
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code().as_str()),
            expected,
            "{other}: {}",
            answer.text()
        );
    }
    // The type and system levels (every tag in use, anybody's) are not declared.
    for path in ["/fhir/Observation/$meta", "/fhir/$meta"] {
        let answer = client.get(path, Some(&token)).await.unwrap();
        assert_eq!(answer.status, 403, "{path}: {}", answer.text());
        assert_eq!(answer.detail_code(), "unsupported-interaction");
    }
}

#[tokio::test]
async fn a_document_is_read_first_and_its_entries_checked_like_a_searchsets() {
    let gateway = Gateway::start();
    let token = anne(&gateway);
    let client = gateway.client();
    let composition = |subject: &str, entries: &[&str]| {
        json!({
            "resourceType": "Composition", "status": "final",
            "type": { "text": "Epikrise" }, "date": "2026-12-01", "title": "Epikrise",
            "subject": { "reference": subject },
            "author": [{ "reference": "Practitioner/prac-ns363" }],
            "section": [{ "title": "Målinger",
                "entry": entries.iter().map(|r| json!({ "reference": r })).collect::<Vec<_>>() }],
        })
    };
    let base = backend_url();
    let annes = backend_send(
        base,
        Method::POST,
        "Composition",
        Some(composition(
            "Patient/pat-anne",
            &["Observation/obs-anne-bp"],
        )),
    )
    .await;
    let bos = backend_send(
        base,
        Method::POST,
        "Composition",
        Some(composition("Patient/pat-bo", &["Observation/obs-bo-bp"])),
    )
    .await;
    // Anne's, but with Bo's Observation packed into it.
    let mixed = backend_send(
        base,
        Method::POST,
        "Composition",
        Some(composition(
            "Patient/pat-anne",
            &["Observation/obs-anne-bp", "Observation/obs-bo-bp"],
        )),
    )
    .await;
    let path = |c: &Value| format!("/fhir/Composition/{}/$document", c["id"].as_str().unwrap());

    let answer = client.get(&path(&annes), Some(&token)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let document = answer.json();
    assert_eq!(document["type"], "document");
    let types: Vec<&str> = document["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"Observation") && types.contains(&"Patient"),
        "{types:?}"
    );

    // Bo's instance, read first: answered as a missing one.
    let answer = client.get(&path(&bos), Some(&token)).await.unwrap();
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(answer.detail_code(), "not-found");

    let answer = client.get(&path(&mixed), Some(&token)).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let text = answer.text();
    assert!(text.contains("obs-anne-bp"), "{text}");
    assert!(
        !text.contains("\"id\":\"obs-bo-bp\""),
        "Bo's Observation left: {text}"
    );

    // Asked to store the document it makes: a write, refused.
    let writer = gateway.token(json!({ "scope": "user/*.cruds" }));
    let answer = client
        .get(&format!("{}?persist=true", path(&annes)), Some(&writer))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "unsupported-interaction");
}

#[tokio::test]
async fn the_operators_rows_come_first_in_batches_too() {
    let gateway = Gateway::start_with(Options {
        extra_config: r#"
[[operation]]
name = "lastn"
resource_types = ["Observation"]
levels = ["type"]
kind = "refused"

[[operation]]
name = "questionnaire"
resource_types = ["Questionnaire"]
levels = ["type"]
kind = "reference"
"#
        .to_owned(),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let client = gateway.client();
    let answer = client
        .get("/fhir/Observation/$lastn?patient=pat-bo", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "unsupported-interaction");
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation/$lastn?patient=pat-bo" } },
        { "request": { "method": "GET", "url": "Observation/obs-bo-bp" } },
    ]});
    let answer = crate::support::send_batch(&client, &token, batch).await;
    let entries = answer.json()["entry"].as_array().unwrap().clone();
    assert!(
        entries[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403"),
        "{entries:?}"
    );
    assert!(
        entries[1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200")
    );

    // An operation the operator declared reaches the backend (which does not know it: its
    // own 4xx comes back), one nobody declared does not.
    let answer = client
        .get("/fhir/Questionnaire/$questionnaire", Some(&token))
        .await
        .unwrap();
    assert!(
        answer.status.is_client_error() && answer.status != 403,
        "{}",
        answer.text()
    );
    let answer = client
        .get("/fhir/Questionnaire/$populate", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
}

#[test]
fn check_config_names_each_bad_operation_row() {
    let gateway = Gateway::start();
    let config = gateway.dir.path().join("portvagt.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"{text}
[[operation]]
name = "$lastn"
levels = ["type"]
kind = "reference"

[[operation]]
name = "x"
levels = ["everywhere"]
kind = "search"

[[operation]]
name = "y"
resource_types = ["Observation"]
levels = ["instance"]
kind = "maybe"

[[operation]]
name = "z"
levels = ["type"]
kind = "search"

[[operation]]
name = "everything"
resource_types = ["Patient"]
levels = ["instance"]
kind = "instance"

[[operation]]
name = "summary"
resource_types = ["Observation"]
levels = ["type"]
kind = "reference"
"#
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in [
        "operation[0]: ",
        "operation[1].levels",
        "operation[2].kind",
        "operation[3]: a search is of one resource type",
        "operation[4]: $everything",
        "operation[5]: reference data",
    ] {
        assert!(stderr.contains(field), "{field} not named in: {stderr}");
    }
}
