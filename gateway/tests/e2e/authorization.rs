//! SMART scopes and the patient context, through the whole stack.

use http::Method;
use serde_json::json;

use crate::support::{Gateway, request};

#[tokio::test]
async fn missing_scope_gets_403_insufficient_scope() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "openid user/Patient.rs" }));
    let client = gateway.client();
    let answer = client
        .get("/fhir/Observation/obs-anne-bp", Some(&token))
        .await
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.detail_code(), "insufficient-scope");
    assert_eq!(answer.json()["issue"][0]["code"], "forbidden");
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    // Read permission does not give create.
    let create = request(
        Method::POST,
        "/fhir/Patient",
        Some(&token),
        Some(json!({ "resourceType": "Patient" })),
    );
    assert_eq!(client.send(create).await.unwrap().status, 403);
    // And the allowed read does work.
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn v2_permission_letters_are_enforced() {
    let gateway = Gateway::start();
    let search_only = gateway.token(json!({ "scope": "user/Observation.s" }));
    let client = gateway.client();
    assert_eq!(
        client
            .get("/fhir/Observation?patient=pat-bo", Some(&search_only))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client
            .get("/fhir/Observation/obs-bo-bp", Some(&search_only))
            .await
            .unwrap()
            .status,
        403
    );
}

#[tokio::test]
async fn patient_token_sees_own_data_and_not_another_patients() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({
        "sub": "anne.hansen", "patient": "pat-anne",
        "scope": "openid launch/patient patient/Patient.rs patient/Observation.rs",
    }));
    let client = gateway.client();
    let own = client
        .get("/fhir/Observation?patient=pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(own.status, 200, "{}", own.text());
    let entries = own.json()["entry"].as_array().cloned().unwrap_or_default();
    assert!(!entries.is_empty());
    for entry in &entries {
        assert_eq!(
            entry["resource"]["subject"]["reference"], "Patient/pat-anne",
            "{entry}"
        );
    }
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap()
            .status,
        200
    );

    let refused = [
        ("/fhir/Patient/pat-bo", 403, "outside-compartment"),
        (
            "/fhir/Observation?patient=pat-bo",
            403,
            "outside-compartment",
        ),
        (
            "/fhir/Observation?subject=Patient/pat-bo",
            403,
            "outside-compartment",
        ),
        // Read of a compartment type: allowed, then the answer is checked and refused.
        // By id: answered as a missing one (whether it exists is not hers to learn).
        ("/fhir/Observation/obs-bo-bp", 404, "not-found"),
        (
            "/fhir/Observation?patient=pat-anne&patient=pat-bo",
            400,
            "conflicting-parameter",
        ),
        (
            "/fhir/Observation?patient=pat-anne&_include=Observation:subject",
            403,
            "search-reaches-other-types",
        ),
        (
            "/fhir/Observation?subject:Patient.name=Bo",
            403,
            "search-reaches-other-types",
        ),
    ];
    for (path, status, code) in refused {
        let answer = client.get(path, Some(&token)).await.unwrap();
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
        assert_eq!(answer.detail_code(), code, "{path}");
    }

    // A search that names no patient is narrowed to Anne.
    let narrowed = client
        .get(
            "/fhir/Observation?code=http://loinc.org%7C4548-4",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(narrowed.status, 200, "{}", narrowed.text());
    let entries = narrowed.json()["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["resource"]["id"], "obs-anne-hba1c");
}

#[tokio::test]
async fn ambiguous_paths_are_refused_before_the_backend() {
    let gateway = Gateway::start();
    let token = gateway.token(json!({ "scope": "user/*.cruds" }));
    let client = gateway.client();
    let cases = [
        ("/fhir/patient/pat-anne", 404, "unknown-resource-type"),
        ("/fhir/Patient/..%2Fpat-bo", 400, "path-encoded-slash"),
        ("/fhir/Patient/%2e%2e", 400, "path-dot-segment"),
        ("/fhir/Patient//pat-anne", 400, "path-empty-segment"),
        ("/fhir/Patient/pat_anne", 400, "malformed-id"),
        ("/other/Patient/pat-anne", 404, "unknown-path"),
    ];
    for (path, status, code) in cases {
        let answer = client.get(path, Some(&token)).await.unwrap();
        assert_eq!(answer.status, status, "{path}: {}", answer.text());
        assert_eq!(answer.detail_code(), code, "{path}");
    }
}

#[tokio::test]
async fn a_granular_scope_holds_for_reads_and_searches() {
    let gateway = Gateway::start();
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let token = gateway.token(json!({ "scope": format!("user/Observation.rs?category={lab}") }));
    let client = gateway.client();
    let hba1c = client
        .get("/fhir/Observation/obs-anne-hba1c", Some(&token))
        .await
        .unwrap();
    assert_eq!(hba1c.status, 200, "{}", hba1c.text());
    let blood_pressure = client
        .get("/fhir/Observation/obs-anne-bp", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (
            blood_pressure.status.as_u16(),
            blood_pressure.detail_code().as_str()
        ),
        (403, "outside-granular-scope")
    );
    let search = client
        .get("/fhir/Observation?patient=pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(search.status, 200, "{}", search.text());
    let ids: Vec<String> = search.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["obs-anne-hba1c"]);
    let write = client
        .send(request(Method::POST, "/fhir/Observation", Some(&token), Some(json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" } }))))
        .await
        .unwrap();
    assert_eq!(write.status, 403);
}

#[tokio::test]
async fn declared_terminology_operations_pass_and_others_do_not() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let terminology = gateway.token(json!({ "scope": "user/ValueSet.r user/CodeSystem.r" }));
    let gateway_refusal = |answer: &crate::support::Answer| {
        answer.status == 403
            || (answer.status == 400
                && answer.json()["issue"][0]["details"]["coding"][0]["system"]
                    == "urn:portvagt:error-code")
    };
    // Forwarded: whatever the backend makes of them, the gateway does not refuse them.
    let expand = client
        .get(
            "/fhir/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/administrative-gender",
            Some(&terminology),
        )
        .await
        .unwrap();
    assert!(
        !gateway_refusal(&expand),
        "{} {}",
        expand.status,
        expand.text()
    );
    let audited = gateway.audit_events_for(expand.headers["x-request-id"].to_str().unwrap());
    assert!(!audited.is_empty(), "recorded like any access");
    // An XML Parameters body goes to the backend as its JSON twin.
    let xml_body = r#"<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="url"/><valueUri value="http://hl7.org/fhir/ValueSet/administrative-gender"/></parameter></Parameters>"#;
    let posted = client
        .send(
            http::Request::builder()
                .method(Method::POST)
                .uri("/fhir/ValueSet/$expand")
                .header("authorization", format!("Bearer {terminology}"))
                .header("content-type", "application/fhir+xml")
                .header("accept", "application/fhir+json")
                .body(http_body_util::Full::new(bytes::Bytes::from(xml_body)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        !gateway_refusal(&posted),
        "{} {}",
        posted.status,
        posted.text()
    );
    // Body parameters are decided on like query parameters.
    let reaching = client
        .send(request(
            Method::POST,
            "/fhir/ValueSet/$expand",
            Some(&terminology),
            Some(json!({ "resourceType": "Parameters", "parameter": [
                { "name": "url", "valueUri": "x" },
                { "name": "_revinclude", "valueString": "Observation:value-concept" }] })),
        ))
        .await
        .unwrap();
    assert_eq!(
        (reaching.status.as_u16(), reaching.detail_code()),
        (403, "search-reaches-other-types".to_owned())
    );
    let anne = gateway.token(json!({ "patient": "pat-anne", "scope": "patient/*.rs" }));
    let naming_bo = client
        .send(request(
            Method::POST,
            "/fhir/Patient/pat-anne/$everything",
            Some(&anne),
            Some(json!({ "resourceType": "Parameters", "parameter": [
                { "name": "_id", "valueString": "pat-bo" }] })),
        ))
        .await
        .unwrap();
    assert_eq!(naming_bo.status, 403, "{}", naming_bo.text());
    let referencing = client
        .send(request(
            Method::POST,
            "/fhir/Patient/pat-anne/$everything",
            Some(&anne),
            Some(json!({ "resourceType": "Parameters", "parameter": [
                { "name": "x", "valueReference": { "reference": "Patient/pat-bo" } }] })),
        ))
        .await
        .unwrap();
    assert_eq!(
        (referencing.status.as_u16(), referencing.detail_code()),
        (400, "malformed-body".to_owned())
    );
    let everything = client
        .send(request(
            Method::POST,
            "/fhir/Patient/pat-anne/$everything",
            Some(&anne),
            Some(json!({ "resourceType": "Parameters", "parameter": [
                { "name": "_count", "valueInteger": 50 }] })),
        ))
        .await
        .unwrap();
    assert_eq!(everything.status, 200, "{}", everything.text());

    // Not granted by another type's scope; not declared on another type; not reaching further.
    let observations = gateway.token(json!({ "scope": "user/Observation.rs" }));
    for (path, token, code) in [
        (
            "/fhir/ValueSet/$expand?url=x",
            &observations,
            "insufficient-scope",
        ),
        (
            "/fhir/Observation/$expand?url=x",
            &terminology,
            "unsupported-interaction",
        ),
        (
            "/fhir/ValueSet/$expand?url=x&_revinclude=Observation:value-concept",
            &terminology,
            "search-reaches-other-types",
        ),
    ] {
        let answer = client.get(path, Some(token)).await.unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code()),
            (403, code.to_owned()),
            "{path}"
        );
    }
}

/// A body whose object gives a member twice means one thing to the gateway's checks and maybe
/// another to the backend (`subject` Bo, then Anne: a parser that keeps the first writes into
/// Bo's record what was checked as Anne's): refused before anything is written, in every kind
/// of body the gateway decides on.
#[tokio::test]
async fn a_body_that_gives_a_member_twice_is_refused_before_it_is_written() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let anne = gateway.token(json!({ "patient": "pat-anne", "scope": "patient/*.cruds" }));
    let marker = format!("dup-{}", uuid::Uuid::new_v4().simple());
    let observation = format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"{marker}"}},"subject":{{"reference":"Patient/pat-bo"}},"subject":{{"reference":"Patient/pat-anne"}}}}"#
    );
    let send = |method: Method, path: &str, content_type: &str, body: String| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("accept", "application/fhir+json")
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {anne}"))
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap()
    };
    let json = "application/fhir+json";
    let cases = [
        (Method::POST, "/fhir/Observation", json, observation.clone()),
        (
            Method::POST,
            "/fhir",
            json,
            format!(
                r#"{{"resourceType":"Bundle","type":"batch","entry":[{{"resource":{observation},"request":{{"method":"POST","url":"Observation"}}}}]}}"#
            ),
        ),
        (
            Method::PATCH,
            "/fhir/Observation/obs-anne-bp",
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/status","value":"amended","value":"final"}]"#.to_owned(),
        ),
        (
            Method::POST,
            "/fhir/Patient/pat-anne/$everything",
            json,
            r#"{"resourceType":"Parameters","parameter":[{"name":"_count","valueInteger":5,"valueInteger":50}]}"#
                .to_owned(),
        ),
    ];
    for (method, path, content_type, body) in cases {
        let answer = client
            .send(send(method.clone(), path, content_type, body))
            .await
            .unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code()),
            (400, "duplicate-member".to_owned()),
            "{method} {path}: {}",
            answer.text()
        );
    }
    // Nothing was written.
    let (status, found) =
        crate::support::backend_get(&format!("Observation?code:text={marker}")).await;
    assert_eq!(status, 200, "{found}");
    assert!(
        found["entry"].as_array().is_none_or(Vec::is_empty),
        "{found}"
    );
    // The same body with the member once is written.
    let once = observation.replacen(r#""subject":{"reference":"Patient/pat-bo"},"#, "", 1);
    let answer = client
        .send(send(Method::POST, "/fhir/Observation", json, once))
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.text());
    // (The search that found none above finds it.)
    let (_, found) = crate::support::backend_get(&format!("Observation?code:text={marker}")).await;
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");
}
