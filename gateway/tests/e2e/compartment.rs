//! The Patient compartment through the whole gateway: narrowing, answer checks, writes, batches.

use http::Method;
use serde_json::{Value, json};

use crate::support::{Gateway, Options, request, send_batch};

fn anne(gateway: &Gateway, scope: &str) -> String {
    gateway.token(json!({ "sub": "anne.hansen", "patient": "pat-anne", "scope": scope }))
}

fn subjects(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    e["resource"]["subject"]["reference"]
                        .as_str()
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_batch_with_mixed_entries_answers_each_entry() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.cruds");
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/pat-anne" } },
        { "request": { "method": "GET", "url": "Patient/pat-bo" } },
        { "request": { "method": "GET", "url": "Observation?code=http://loinc.org%7C4548-4" } },
        { "request": { "method": "GET", "url": "Observation/obs-bo-bp" } },
        { "request": { "method": "DELETE", "url": "Observation/obs-bo-hba1c" } },
    ]});
    let answer = gateway
        .client()
        .send(request(Method::POST, "/fhir", Some(&token), Some(batch)))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let bundle = answer.json();
    assert_eq!(bundle["type"], "batch-response");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5, "{bundle}");
    let status = |i: usize| {
        entries[i]["response"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(status(0).starts_with("200"), "{}", entries[0]);
    assert_eq!(entries[0]["resource"]["id"], "pat-anne");
    assert_eq!(status(1), "403 Forbidden");
    assert!(status(2).starts_with("200"), "{}", entries[2]);
    assert_eq!(
        subjects(&entries[2]["resource"]),
        ["Patient/pat-anne"],
        "the search was narrowed to Anne"
    );
    // Allowed as a read of a compartment type, then refused when the answer turned out to be
    // Bo's: answered as a missing one, as a single read is.
    assert_eq!(status(3), "404 Not Found");
    assert!(entries[3].get("resource").is_none());
    assert_eq!(status(4), "403 Forbidden");
    assert!(
        !answer.text().contains("pat-bo\""),
        "Bo's data leaked: {}",
        answer.text()
    );
    // And Bo's observation was not deleted.
    let (still_there, _) = crate::support::backend_get("Observation/obs-bo-hba1c").await;
    assert_eq!(still_there, 200);
}

#[tokio::test]
async fn a_transaction_with_a_denied_entry_is_refused_whole() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.cruds");
    let marker = uuid::Uuid::new_v4().to_string();
    let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "request": { "method": "POST", "url": "Observation" },
          "resource": { "resourceType": "Observation", "status": "final", "code": { "text": marker },
                        "identifier": [{ "system": crate::support::MARKER_SYSTEM, "value": marker }],
                        "subject": { "reference": "Patient/pat-anne" } } },
        { "request": { "method": "GET", "url": "Patient/pat-bo" } },
    ]});
    let answer = gateway
        .client()
        .send(request(
            Method::POST,
            "/fhir",
            Some(&token),
            Some(transaction),
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "outside-compartment");
    let found = crate::support::marked("Observation", &marker).await;
    assert_eq!(
        found.len(),
        0,
        "nothing of the refused transaction was written"
    );
}

#[tokio::test]
async fn a_patient_creates_for_herself_only() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/Observation.crs");
    let client = gateway.client();
    let for_subject = |patient: &str| {
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "blodsukker" },
                "subject": { "reference": format!("Patient/{patient}") } })
    };
    let own = client
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(for_subject("pat-anne")),
        ))
        .await
        .unwrap();
    assert_eq!(own.status, 201, "{}", own.text());
    let other = client
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(for_subject("pat-bo")),
        ))
        .await
        .unwrap();
    assert_eq!(other.status, 403, "{}", other.text());
    assert_eq!(other.detail_code(), "outside-compartment");
    let mismatched = client
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(json!({ "resourceType": "Patient" })),
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            mismatched.status.as_u16(),
            mismatched.detail_code().as_str()
        ),
        (400, "body-mismatch")
    );
}

#[tokio::test]
async fn a_patient_changes_and_deletes_only_her_own_records() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/Observation.cruds");
    let client = gateway.client();
    let observation = |id: &str, patient: &str, text: &str| {
        json!({ "resourceType": "Observation", "id": id, "status": "final", "code": { "text": text },
                "subject": { "reference": format!("Patient/{patient}") } })
    };
    // Her own record: update and patch go through, bound to the version the gateway read.
    let update = client
        .send(request(
            Method::PUT,
            "/fhir/Observation/obs-anne-weight",
            Some(&token),
            Some(observation("obs-anne-weight", "pat-anne", "vægt")),
        ))
        .await
        .unwrap();
    assert_eq!(update.status, 200, "{}", update.text());
    let mut patch = request(
        Method::PATCH,
        "/fhir/Observation/obs-anne-weight",
        Some(&token),
        None,
    );
    *patch.body_mut() = http_body_util::Full::new(bytes::Bytes::from(
        json!([{ "op": "replace", "path": "/status", "value": "amended" }]).to_string(),
    ));
    patch.headers_mut().insert(
        "content-type",
        "application/json-patch+json".parse().unwrap(),
    );
    let patched = client.send(patch).await.unwrap();
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["status"], "amended");
    // A JSON Patch of an element that says whose it is: judged by what it makes of the version
    // read. Kept hers, it goes through; made Bo's (or nobody's, or through a pointer some
    // servers read otherwise), it is refused and nothing changes.
    let json_patch = |operations: serde_json::Value| {
        crate::support::json_patch(
            "/fhir/Observation/obs-anne-weight",
            &token,
            &operations.to_string(),
            &[],
        )
    };
    let shown = client
        .send(json_patch(
            json!([{ "op": "add", "path": "/subject/display", "value": "Anne Andersen" }]),
        ))
        .await
        .unwrap();
    assert_eq!(shown.status, 200, "{}", shown.text());
    for (operations, code) in [
        (
            json!([{ "op": "replace", "path": "/subject/reference", "value": "Patient/pat-bo" }]),
            "outside-compartment",
        ),
        (
            json!([{ "op": "add", "path": "/performer", "value": [{ "reference": "Patient/pat-bo" }] }]),
            "outside-compartment",
        ),
        (
            json!([{ "op": "replace", "path": "/subject", "value": {
                "identifier": { "system": "urn:oid:1.2.208.176.1.2", "value": "0501792275" } } }]),
            "outside-compartment",
        ),
        (
            json!([{ "op": "replace", "path": "/__proto__/subject/reference", "value": "Patient/pat-bo" }]),
            "write-not-verifiable",
        ),
    ] {
        let refused = client.send(json_patch(operations.clone())).await.unwrap();
        assert_eq!(
            (refused.status.as_u16(), refused.detail_code().as_str()),
            (403, code),
            "{operations}"
        );
    }
    // A move is placed differently by servers (within one array, Medplum finds the place
    // before it removes): not applied, refused. A path a server resolves by its last
    // `Patient/<id>` names that patient.
    for (operations, code) in [
        (
            json!([{ "op": "add", "path": "/performer",
                    "value": ["Patient/pat-bo", { "display": "A" }, { "display": "B" }] },
                { "op": "move", "from": "/performer/0", "path": "/performer/1/reference" },
                { "op": "remove", "path": "/performer/1" }]),
            "write-not-verifiable",
        ),
        (
            json!([{ "op": "add", "path": "/performer", "value": [{ "reference": "Patient/pat-anne" }] },
                { "op": "replace", "path": "/subject/reference", "value": "../Patient/pat-bo" }]),
            "outside-compartment",
        ),
    ] {
        let refused = client.send(json_patch(operations.clone())).await.unwrap();
        assert_eq!(
            (refused.status.as_u16(), refused.detail_code().as_str()),
            (403, code),
            "{operations}"
        );
    }
    let (_, kept) = crate::support::backend_get("Observation/obs-anne-weight").await;
    assert_eq!(kept["subject"]["reference"], "Patient/pat-anne", "{kept}");
    assert!(kept.get("performer").is_none(), "{kept}");
    // Her own Patient is hers to patch, but not to link to another's record.
    let own = anne(&gateway, "patient/Patient.u");
    let link = json!([{ "op": "add", "path": "/link", "value": [{ "type": "seealso",
        "other": { "reference": "Patient/pat-bo" } }] }]);
    let refused = client
        .send(crate::support::json_patch(
            "/fhir/Patient/pat-anne",
            &own,
            &link.to_string(),
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(
        (refused.status.as_u16(), refused.detail_code().as_str()),
        (403, "outside-compartment"),
        "{}",
        refused.text()
    );
    let (_, herself) = crate::support::backend_get("Patient/pat-anne").await;
    assert!(herself.get("link").is_none(), "{herself}");

    // Bo's record: overwriting it with a body about Anne would move it into her record.
    let takeover = client
        .send(request(
            Method::PUT,
            "/fhir/Observation/obs-bo-weight",
            Some(&token),
            Some(observation("obs-bo-weight", "pat-anne", "mine now")),
        ))
        .await
        .unwrap();
    // Refused, and answered as a missing one would be: nothing tells her it exists.
    assert_eq!(
        (takeover.status.as_u16(), takeover.detail_code().as_str()),
        (404, "not-found")
    );
    let delete = client
        .send(request(
            Method::DELETE,
            "/fhir/Observation/obs-bo-weight",
            Some(&token),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        (delete.status.as_u16(), delete.detail_code().as_str()),
        (404, "not-found")
    );
    let (status, still) = crate::support::backend_get("Observation/obs-bo-weight").await;
    assert_eq!(status, 200);
    assert_eq!(still["subject"]["reference"], "Patient/pat-bo");

    // Moving her own record to Bo is refused before anything is read.
    let give_away = client
        .send(request(
            Method::PUT,
            "/fhir/Observation/obs-anne-weight",
            Some(&token),
            Some(observation("obs-anne-weight", "pat-bo", "x")),
        ))
        .await
        .unwrap();
    assert_eq!(
        (give_away.status.as_u16(), give_away.detail_code().as_str()),
        (403, "outside-compartment")
    );

    // And she may delete what is hers.
    let created = client
        .send(request(
            Method::POST,
            "/fhir/Observation",
            Some(&token),
            Some(observation("ignored", "pat-anne", "midlertidig")),
        ))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let deleted = client
        .send(request(
            Method::DELETE,
            &format!("/fhir/Observation/{id}"),
            Some(&token),
            None,
        ))
        .await
        .unwrap();
    assert!(deleted.status.is_success(), "{}", deleted.text());
}

#[tokio::test]
async fn includes_are_filtered_to_the_compartment() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.rs");
    let answer = gateway
        .client()
        .get("/fhir/Observation?patient=pat-anne&_include=Observation:performer&_revinclude=Provenance:target", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let bundle = answer.json();
    for entry in bundle["entry"].as_array().unwrap() {
        let resource = &entry["resource"];
        let kind = resource["resourceType"].as_str().unwrap();
        assert!(
            matches!(kind, "Observation" | "Practitioner" | "Provenance"),
            "{resource}"
        );
        if kind == "Observation" {
            assert_eq!(resource["subject"]["reference"], "Patient/pat-anne");
        }
    }
}

#[tokio::test]
async fn filtered_entries_can_be_configured_to_deny() {
    // `_include` of the performer is Practitioner: shared, so allowed; an Observation with Bo as
    // performer (none in the seed) would be outside. Use a search whose answer mixes patients:
    // a compartment search cannot, so check the single-resource path instead.
    let gateway = Gateway::start_with(Options {
        extra_config: "[policy]\nfiltered_entries = \"deny\"\n".into(),
        ..Default::default()
    });
    let token = anne(&gateway, "patient/*.rs");
    let answer = gateway
        .client()
        .get("/fhir/Condition/cond-bo-1", Some(&token))
        .await
        .unwrap();
    // By id: answered as a missing one (whether it exists is not hers to learn).
    assert_eq!(answer.status, 404);
    assert_eq!(answer.detail_code(), "not-found");
    let own = gateway
        .client()
        .get("/fhir/Condition/cond-anne-1", Some(&token))
        .await
        .unwrap();
    assert_eq!(own.status, 200, "{}", own.text());
}

#[tokio::test]
async fn everything_on_herself_and_not_on_another_patient() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.rs");
    let client = gateway.client();
    let own = client
        .get("/fhir/Patient/pat-anne/$everything", Some(&token))
        .await
        .unwrap();
    assert_eq!(own.status, 200, "{}", own.text());
    let bundle = own.json();
    let entries = bundle["entry"].as_array().unwrap();
    let kinds: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    for kind in [
        "Patient",
        "Observation",
        "Condition",
        "Encounter",
        "MedicationRequest",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    assert!(
        !own.text().contains("Patient/pat-bo"),
        "Bo's data in Anne's $everything"
    );
    for entry in entries {
        assert!(
            entry["fullUrl"]
                .as_str()
                .unwrap()
                .starts_with(&gateway.base_url),
            "{entry}"
        );
    }

    let other = client
        .get("/fhir/Patient/pat-bo/$everything", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (other.status.as_u16(), other.detail_code().as_str()),
        (403, "outside-compartment")
    );

    let narrow = anne(&gateway, "patient/Patient.rs patient/Observation.rs");
    let answer = client
        .get("/fhir/Patient/pat-anne/$everything", Some(&narrow))
        .await
        .unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (403, "insufficient-scope")
    );
}

#[tokio::test]
async fn revincludes_on_shared_data_do_not_reach_other_patients() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.rs");
    let client = gateway.client();
    // The backend does answer these with other patients' records: the gateway must not pass them.
    let (status, direct) =
        crate::support::backend_get("Practitioner?_revinclude=Observation:performer").await;
    assert_eq!(status, 200);
    assert!(
        direct.to_string().contains("pat-bo"),
        "the probe must reach Bo's data at the backend: {direct}"
    );
    for path in [
        "/fhir/Organization?_revinclude=Patient:organization",
        "/fhir/Organization?_revinclude=Patient:general-practitioner",
        "/fhir/Practitioner?_revinclude=Observation:performer",
        "/fhir/Practitioner?_revinclude=MedicationRequest:requester",
    ] {
        let answer = client.get(path, Some(&token)).await.unwrap();
        assert!(
            answer.status == 200 || answer.status == 400,
            "{path}: {}",
            answer.text()
        );
        let text = answer.text();
        for other in ["pat-bo", "pat-carla", "0501792275", "2512484916"] {
            assert!(!text.contains(other), "{path} leaked {other}: {text}");
        }
    }
}

#[tokio::test]
async fn a_conditional_create_is_no_oracle_on_another_patient() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.cruds");
    let client = gateway.client();
    let observation = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
                              "subject": { "reference": "Patient/pat-anne" } });
    let mut create = request(
        Method::POST,
        "/fhir/Observation",
        Some(&token),
        Some(observation.clone()),
    );
    create
        .headers_mut()
        .insert("if-none-exist", "subject=Patient/pat-bo".parse().unwrap());
    create
        .headers_mut()
        .insert("prefer", "return=minimal".parse().unwrap());
    let answer = client.send(create).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (403, "write-not-verifiable")
    );
    assert!(answer.headers.get("location").is_none());

    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "POST", "url": "Observation", "ifNoneExist": "subject=Patient/pat-bo" }, "resource": observation },
    ]});
    let answer = send_batch(&client, &token, batch).await;
    let entry = &answer.json()["entry"][0];
    assert_eq!(entry["response"]["status"], "403 Forbidden", "{entry}");
    assert!(!answer.text().contains("pat-bo"), "{}", answer.text());
}

#[tokio::test]
async fn head_tells_nothing_that_get_would_not() {
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/*.rs");
    let client = gateway.client();
    let own = client
        .send(request(
            Method::HEAD,
            "/fhir/Observation/obs-anne-bp",
            Some(&token),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(own.status, 200);
    assert!(own.body.is_empty());
    let other = client
        .send(request(
            Method::HEAD,
            "/fhir/Observation/obs-bo-bp",
            Some(&token),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(other.status, 404);
    assert!(other.headers.get("etag").is_none());
}

#[tokio::test]
async fn elements_are_answered_and_still_checked_and_audited() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let token = anne(&gateway, "patient/Observation.rs");
    // The backend honours `_elements`: asked as the client asks, the answer would have no
    // reference left to check.
    let (_, direct) = crate::support::backend_get("Observation/obs-anne-bp?_elements=code").await;
    assert!(
        direct.get("code").is_some() && direct.get("subject").is_none(),
        "{direct}"
    );

    // A search naming nobody, cut to `code`: narrowed to Anne, checked on the references the
    // gateway asked for too, and answered without them.
    let answer = client
        .get("/fhir/Observation?_elements=code", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let bundle = answer.json();
    let entries = bundle["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        let resource = &entry["resource"];
        assert!(resource.get("code").is_some(), "{resource}");
        for added in ["subject", "performer", "contained"] {
            assert!(resource.get(added).is_none(), "{added} in {resource}");
        }
    }
    // The audit record still knows whose data left.
    let request_id = answer.headers["x-request-id"].to_str().unwrap();
    let named: Vec<String> = gateway
        .audit_events_for(request_id)
        .iter()
        .flat_map(|event| event["entity"].as_array().cloned().unwrap_or_default())
        .filter_map(|entity| entity["what"]["reference"].as_str().map(str::to_owned))
        .collect();
    assert!(named.contains(&"Patient/pat-anne".to_owned()), "{named:?}");

    // Another patient's resource, cut to `status`: still refused (as a missing one).
    let answer = client
        .get("/fhir/Observation/obs-bo-bp?_elements=status", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 404, "{}", answer.text());
    // What the client asked for is kept: `subject` asked is `subject` answered.
    let answer = client
        .get(
            "/fhir/Observation/obs-anne-bp?_elements=subject",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let resource = answer.json();
    assert_eq!(resource["subject"]["reference"], "Patient/pat-anne");
    assert!(resource.get("performer").is_none(), "{resource}");
}

/// Under a patient's scope another patient's resource, a missing one and a deleted one are
/// answered alike (the gateway's 404), by id, by version, as a history, as a write target, and
/// counted: nothing tells her which ids exist.
#[tokio::test]
async fn other_patients_missing_and_deleted_resources_look_alike() {
    use crate::support::{MARKER_SYSTEM, backend_send, backend_url};
    let gateway = Gateway::start();
    let token = anne(&gateway, "patient/Observation.cruds");
    let client = gateway.client();
    // One of Bo's, created and deleted in the backend.
    let marker = uuid::Uuid::new_v4().to_string();
    let deleted = backend_send(
        backend_url(),
        Method::POST,
        "Observation",
        Some(
            json!({ "resourceType": "Observation", "status": "final", "code": { "text": marker },
                     "identifier": [{ "system": MARKER_SYSTEM, "value": marker }],
                     "subject": { "reference": "Patient/pat-bo" } }),
        ),
    )
    .await;
    let deleted = deleted["id"].as_str().unwrap().to_owned();
    backend_send(
        backend_url(),
        Method::DELETE,
        &format!("Observation/{deleted}"),
        None,
    )
    .await;
    let outcome = |answer: &crate::support::Answer| {
        let mut body = answer.json();
        // The request id differs, nothing else may.
        body["issue"][0]["diagnostics"] = Value::Null;
        (answer.status.as_u16(), body)
    };
    let missing = client
        .get("/fhir/Observation/no-such-observation", Some(&token))
        .await
        .unwrap();
    let expected = outcome(&missing);
    assert_eq!(expected.0, 404, "{}", missing.text());
    assert_eq!(missing.detail_code(), "not-found");
    for path in [
        "/fhir/Observation/obs-bo-weight".to_owned(),
        format!("/fhir/Observation/{deleted}"),
        "/fhir/Observation/obs-bo-weight/_history/1".to_owned(),
        "/fhir/Observation/obs-bo-weight/_history".to_owned(),
        format!("/fhir/Observation/{deleted}/_history"),
        "/fhir/Observation/no-such-observation/_history".to_owned(),
    ] {
        let answer = client.get(&path, Some(&token)).await.unwrap();
        assert_eq!(outcome(&answer), expected, "{path}: {}", answer.text());
    }
    for method in [Method::DELETE, Method::PUT] {
        for id in ["obs-bo-weight", "no-such-observation"] {
            let body = (method == Method::PUT).then(|| {
                json!({ "resourceType": "Observation", "id": id, "status": "final",
                        "code": { "text": "x" }, "subject": { "reference": "Patient/pat-anne" } })
            });
            let answer = client
                .send(request(
                    method.clone(),
                    &format!("/fhir/Observation/{id}"),
                    Some(&token),
                    body,
                ))
                .await
                .unwrap();
            assert_eq!(
                outcome(&answer),
                expected,
                "{method} {id}: {}",
                answer.text()
            );
        }
    }
    // The same as batch entries: every one answered alike.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation/obs-bo-weight" } },
        { "request": { "method": "GET", "url": "Observation/no-such-observation" } },
        { "request": { "method": "GET", "url": format!("Observation/{deleted}") } },
        { "request": { "method": "GET", "url": "Observation/obs-bo-weight/_history" } },
        { "request": { "method": "GET", "url": "Observation/no-such-observation/_history" } },
        { "request": { "method": "GET", "url": "Observation/obs-bo-weight/_history/1" } },
        // A HEAD entry is read as the GET it is, and answered alike too.
        { "request": { "method": "HEAD", "url": "Observation/obs-bo-weight" } },
        { "request": { "method": "HEAD", "url": "Observation/no-such-observation" } },
    ]});
    let answer = send_batch(&client, &token, batch).await;
    let entries = answer.json()["entry"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 8);
    for entry in &entries {
        assert_eq!(entry, &entries[0], "{}", answer.text());
    }
    assert_eq!(entries[0]["response"]["status"], "404 Not Found");
    // A transaction fails whole on a missing entry: reading by id in one is refused, whatever
    // the id (her own too).
    for id in ["obs-anne-weight", "obs-bo-weight", "no-such-observation"] {
        let transaction = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            { "request": { "method": "GET", "url": format!("Observation/{id}") } } ]});
        let answer = client
            .send(request(
                Method::POST,
                "/fhir",
                Some(&token),
                Some(transaction),
            ))
            .await
            .unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code().as_str()),
            (403, "outside-compartment"),
            "{id}"
        );
    }
    // A search pinned by what only names her answers without a total, as an entry too.
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation?performer=Patient/pat-anne&_count=1&_total=accurate" } },
        { "request": { "method": "GET", "url": "Observation?performer=Patient/pat-anne&subject=&_count=1&_total=accurate" } }
    ]});
    // Two about someone else that she performed: matches of `performer` that are not hers.
    for _ in 0..2 {
        backend_send(
            backend_url(),
            Method::POST,
            "Observation",
            Some(json!({ "resourceType": "Observation", "status": "final",
                         "code": { "text": marker },
                         "identifier": [{ "system": MARKER_SYSTEM, "value": marker }],
                         "subject": { "reference": format!("Patient/other-{marker}") },
                         "performer": [{ "reference": "Patient/pat-anne" }] })),
        )
        .await;
    }
    // The backend itself counts them.
    let (_, counted) = crate::support::backend_get(
        "Observation?performer=Patient/pat-anne&_count=1&_total=accurate",
    )
    .await;
    assert!(counted["total"].as_u64() >= Some(2), "{counted}");
    let answer = send_batch(&client, &token, batch).await;
    for entry in answer.json()["entry"].as_array().unwrap() {
        assert!(
            entry["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("200"),
            "{entry}"
        );
        assert!(entry["resource"].get("total").is_none(), "{entry}");
    }
    let single = client
        .get(
            "/fhir/Observation?performer=Patient/pat-anne&_count=1&_total=accurate",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(single.status, 200, "{}", single.text());
    assert!(single.json().get("total").is_none(), "{}", single.text());
    let (status, still) = crate::support::backend_get("Observation/obs-bo-weight").await;
    assert_eq!(status, 200);
    assert_eq!(still["subject"]["reference"], "Patient/pat-bo");
    let (status, _) = crate::support::backend_get("Observation/no-such-observation").await;
    assert_eq!(
        status, 404,
        "an update under a patient's scope creates nothing"
    );
    // A count pinned by a parameter that merely names her counts only what is about her.
    let count = |query: &str| {
        let client = client.clone();
        let token = token.clone();
        let query = query.to_owned();
        async move {
            let answer = client
                .get(&format!("/fhir/Observation?{query}"), Some(&token))
                .await
                .unwrap();
            assert_eq!(answer.status, 200, "{query}: {}", answer.text());
            answer.json()["total"].as_u64()
        }
    };
    assert_eq!(
        count(&format!("_id={deleted}&_summary=count")).await,
        count("_id=no-such-observation&_summary=count").await
    );
    assert_eq!(
        count("_id=obs-bo-weight&_summary=count").await,
        count("_id=no-such-observation&_summary=count").await
    );
}
