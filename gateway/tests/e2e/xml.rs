//! FHIR XML through the gateway: answers in XML when the client asks (`Accept`, `_format`, or
//! an XML body), errors too; an XML body is judged exactly as its JSON twin (the same status
//! and detail code, the same write at the backend); hostile XML is a 400 that reads nothing.

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::support::{Answer, Client, Gateway, request};

/// A request with an XML body (or none), asking for `accept`.
fn xml_request(
    method: Method,
    path: &str,
    token: &str,
    accept: &str,
    xml: Option<&str>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"));
    if !accept.is_empty() {
        builder = builder.header("accept", accept);
    }
    if xml.is_some() {
        builder = builder.header("content-type", "application/fhir+xml; charset=utf-8");
    }
    builder
        .body(Full::new(Bytes::from(xml.unwrap_or("").to_owned())))
        .unwrap()
}

fn is_xml(answer: &Answer) -> bool {
    answer
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+xml"))
}

/// An XML answer read back into JSON, the way the gateway reads XML.
fn json_of_xml(answer: &Answer) -> Value {
    assert!(is_xml(answer), "{:?}: {}", answer.headers, answer.text());
    let json = portvagt_fhir::xml_to_json(&answer.body)
        .unwrap_or_else(|e| panic!("{e}: {}", answer.text()));
    serde_json::from_slice(&json).unwrap()
}

fn detail_code(outcome: &Value) -> &str {
    outcome["issue"][0]["details"]["coding"][0]["code"]
        .as_str()
        .unwrap_or_default()
}

fn observation_for(patient: &str, marker: &str) -> Value {
    json!({ "resourceType": "Observation", "status": "final", "code": { "text": marker },
            "identifier": [{ "system": crate::support::MARKER_SYSTEM, "value": marker }],
            "subject": { "reference": format!("Patient/{patient}") } })
}

fn as_xml(value: &Value) -> String {
    String::from_utf8(portvagt_fhir::json_to_xml(value.to_string().as_bytes()).unwrap()).unwrap()
}

#[tokio::test]
async fn a_client_that_asks_for_xml_gets_xml_and_the_same_answer() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let anne = gateway.token(
        json!({ "patient": "pat-anne", "fhirUser": "Patient/pat-anne",
        "scope": "patient/Patient.rs patient/Observation.rs" }),
    );

    // A read, by Accept and by _format; the JSON answer is the same resource.
    let json = client
        .get("/fhir/Patient/pat-anne", Some(&anne))
        .await
        .unwrap();
    assert_eq!(json.status, 200, "{}", json.text());
    for (path, accept) in [
        ("/fhir/Patient/pat-anne", "application/fhir+xml"),
        (
            "/fhir/Patient/pat-anne?_format=xml",
            "application/fhir+json",
        ),
        ("/fhir/Patient/pat-anne?_format=application/fhir%2Bxml", ""),
        ("/fhir/Patient/pat-anne", "application/xml, */*;q=0.1"),
    ] {
        let xml = client
            .send(xml_request(Method::GET, path, &anne, accept, None))
            .await
            .unwrap();
        assert_eq!(xml.status, 200, "{path}: {}", xml.text());
        assert!(
            xml.text()
                .contains("<Patient xmlns=\"http://hl7.org/fhir\">")
        );
        assert!(
            xml.headers
                .get_all("vary")
                .iter()
                .any(|v| v.to_str().unwrap_or("").contains("accept")),
            "{:?}",
            xml.headers
        );
        let mut read_back = json_of_xml(&xml);
        let mut original = json.json();
        // The narrative's whitespace is the one thing XML reading is known to lose.
        for value in [&mut read_back, &mut original] {
            value.as_object_mut().unwrap().remove("text");
        }
        assert_eq!(read_back, original, "{path}");
    }

    // A search, narrowed to Anne as in JSON, as an XML searchset.
    let xml = client
        .send(xml_request(
            Method::GET,
            "/fhir/Observation?_format=xml",
            &anne,
            "",
            None,
        ))
        .await
        .unwrap();
    assert_eq!(xml.status, 200, "{}", xml.text());
    let bundle = json_of_xml(&xml);
    assert_eq!(bundle["type"], "searchset");
    let entries = bundle["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        assert_eq!(
            entry["resource"]["subject"]["reference"], "Patient/pat-anne",
            "{entry}"
        );
    }

    // A refusal in XML, with the same detail code as in JSON.
    let json = client
        .get("/fhir/Patient/pat-bo", Some(&anne))
        .await
        .unwrap();
    assert_eq!(json.status, 403);
    let xml = client
        .send(xml_request(
            Method::GET,
            "/fhir/Patient/pat-bo",
            &anne,
            "application/fhir+xml",
            None,
        ))
        .await
        .unwrap();
    assert_eq!(xml.status, 403, "{}", xml.text());
    let outcome = json_of_xml(&xml);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(detail_code(&outcome), json.detail_code());

    // A format the gateway does not produce is still refused.
    let answer = client
        .get("/fhir/Patient/pat-anne?_format=turtle", Some(&anne))
        .await
        .unwrap();
    assert_eq!(answer.status, 406, "{}", answer.text());
}

/// The same write in JSON and in XML: the same status and detail code.
async fn both_ways(client: &Client, token: &str, path: &str, body: &Value) -> (Answer, Answer) {
    let json = client
        .send(request(Method::POST, path, Some(token), Some(body.clone())))
        .await
        .unwrap();
    let xml = client
        .send(xml_request(
            Method::POST,
            path,
            token,
            "",
            Some(&as_xml(body)),
        ))
        .await
        .unwrap();
    (json, xml)
}

#[tokio::test]
async fn an_xml_body_is_judged_as_its_json_twin() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let anne = gateway.token(
        json!({ "patient": "pat-anne", "fhirUser": "Patient/pat-anne",
        "scope": "patient/Observation.c" }),
    );

    // Someone else's: refused alike, nothing written.
    let (json, xml) = both_ways(
        &client,
        &anne,
        "/fhir/Observation",
        &observation_for("pat-bo", "xml-twin-bo"),
    )
    .await;
    assert_eq!(json.status, 403, "{}", json.text());
    assert_eq!(xml.status, 403, "{}", xml.text());
    assert_eq!(detail_code(&json_of_xml(&xml)), json.detail_code());
    assert!(
        crate::support::marked("Observation", "xml-twin-bo")
            .await
            .is_empty()
    );

    // Her own: written alike, and what the backend holds is the JSON twin of the XML.
    let (json, xml) = both_ways(
        &client,
        &anne,
        "/fhir/Observation",
        &observation_for("pat-anne", "xml-twin-anne"),
    )
    .await;
    assert_eq!(json.status, 201, "{}", json.text());
    assert_eq!(xml.status, 201, "{}", xml.text());
    let created = json_of_xml(&xml);
    assert_eq!(created["subject"]["reference"], "Patient/pat-anne");
    let stored = crate::support::marked("Observation", "xml-twin-anne").await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    for resource in &stored {
        assert_eq!(resource["subject"]["reference"], "Patient/pat-anne");
        assert_eq!(resource["code"]["text"], "xml-twin-anne");
    }

    // A batch in XML: decided entry by entry as in JSON.
    let system = gateway.token(
        json!({ "patient": "pat-anne", "fhirUser": "Patient/pat-anne",
        "scope": "patient/Patient.rs" }),
    );
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/pat-anne" } },
        { "request": { "method": "GET", "url": "Patient/pat-bo" } },
    ]});
    let (json, xml) = both_ways(&client, &system, "/fhir", &batch).await;
    assert_eq!(json.status, 200, "{}", json.text());
    assert_eq!(xml.status, 200, "{}", xml.text());
    let statuses = |bundle: &Value| -> Vec<Value> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry["response"]["status"].clone())
            .collect()
    };
    let answered = json_of_xml(&xml);
    assert_eq!(statuses(&answered), statuses(&json.json()));
    assert_eq!(statuses(&answered)[1], "403 Forbidden");
}

#[tokio::test]
async fn hostile_xml_is_refused_unread_in_the_clients_words() {
    let gateway = Gateway::start();
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/Observation.cruds" }));
    for (xml, detail) in [
        (
            r#"<!DOCTYPE Observation [<!ENTITY x SYSTEM "file:///etc/passwd">]><Observation xmlns="http://hl7.org/fhir"><status value="&x;"/></Observation>"#.to_owned(),
            "document type",
        ),
        (
            format!(
                r#"<Observation xmlns="http://hl7.org/fhir">{}{}</Observation>"#,
                "<extension>".repeat(10_000),
                "</extension>".repeat(10_000)
            ),
            "nested deeper",
        ),
        (
            r#"<Observation xmlns="http://hl7.org/fhir"><status value="final">"#.to_owned(),
            "not an R4 FHIR resource",
        ),
    ] {
        let answer = client
            .send(xml_request(
                Method::POST,
                "/fhir/Observation",
                &token,
                "",
                Some(&xml),
            ))
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{}", answer.text());
        let outcome = json_of_xml(&answer);
        assert_eq!(detail_code(&outcome), "malformed-xml", "{}", answer.text());
        assert!(
            outcome["issue"][0]["details"]["text"]
                .as_str()
                .unwrap()
                .contains(detail),
            "{outcome}"
        );
        assert!(!answer.text().contains("root:"), "nothing was read from a file");
    }
    // An XML body on an interaction that takes none is not forwarded unread.
    let everything = gateway.token(json!({ "scope": "user/*.rs" }));
    let answer = client
        .send(xml_request(
            Method::POST,
            "/fhir/Patient/pat-anne/$everything",
            &everything,
            "",
            Some(r#"<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><Parameters xmlns="http://hl7.org/fhir"/>"#),
        ))
        .await
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(detail_code(&json_of_xml(&answer)), "malformed-xml");
}
