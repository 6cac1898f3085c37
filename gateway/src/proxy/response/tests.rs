//! The response phase's steps, each on its own.

use portvagt_policy::{Decision, classify};
use serde_json::{Value, json};

use super::*;

fn anne_only() -> Obligations {
    Obligations {
        compartment: Some("pat-anne".into()),
        ..Obligations::default()
    }
}

fn observation(id: &str, patient: &str) -> Value {
    json!({ "resourceType": "Observation", "id": id,
            "subject": { "reference": format!("Patient/{patient}") } })
}

fn bytes(value: &Value) -> Bytes {
    Bytes::from(value.to_string())
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn headers_are_cleaned_and_locations_point_at_the_gateway() {
    let rewriter = UrlRewriter::new("http://backend:8080/fhir", "https://gw.example/fhir");
    let cleaned = |location: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("http://backend:8080/fhir/Observation/o1/_history/2"),
        );
        headers.insert(header::CONTENT_LOCATION, HeaderValue::from_static(location));
        headers.insert(header::SERVER, HeaderValue::from_static("HAPI 7.2"));
        clean_headers(&mut headers, &rewriter, false);
        assert_eq!(
            headers[header::LOCATION],
            "https://gw.example/fhir/Observation/o1/_history/2"
        );
        assert!(!headers.contains_key(header::SERVER));
        headers
            .get(header::CONTENT_LOCATION)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    // A relative reference resolves against the gateway's URL of the request: it stays.
    for relative in ["Observation/o1/_history/2", "?page=2", "Patient/1%2F2"] {
        assert_eq!(cleaned(relative).as_deref(), Some(relative));
    }
    // Anything else that does not point below the backend's base names a place the client
    // has no business with (another host, the backend spelled another way, a network-path
    // or backslashed reference a browser reads as another host): it goes.
    for elsewhere in [
        "https://elsewhere.example/x",
        "http://127.0.0.1:8080/fhir/Observation/o1",
        "HTTP://BACKEND:8080/fhir/Observation/o1",
        "http://backend:8080/internal/x",
        "//elsewhere.example/x",
        "/\\elsewhere.example/x",
        "javascript:alert(1)",
        "urn:uuid:1",
        "",
        // The backend's own base path, another route of the gateway's.
        "/fhir/R4/Observation/o1",
        "/fhir/Observation/o1",
        // Browsers drop tabs and newlines from a URL before reading it.
        "/\t/elsewhere.example/x",
        "h\ttps://elsewhere.example/x",
        "Observation/o1 x",
        "\\\\elsewhere.example",
        "#frag",
        ":x",
        // Dot segments climb to another route of the gateway's.
        "../../admin/x",
        "Patient/../../x",
        "%2e%2E/x",
        ".",
    ] {
        assert_eq!(cleaned(elsewhere), None, "{elsewhere:?}");
    }
    // A second value is not passed on beside the one checked.
    let mut headers = HeaderMap::new();
    headers.append(
        header::LOCATION,
        HeaderValue::from_static("http://backend:8080/fhir/Patient/1"),
    );
    headers.append(
        header::LOCATION,
        HeaderValue::from_static("http://backend:8080/fhir/Patient/2"),
    );
    clean_headers(&mut headers, &rewriter, false);
    assert_eq!(
        headers.get_all(header::LOCATION).iter().collect::<Vec<_>>(),
        [&HeaderValue::from_static(
            "https://gw.example/fhir/Patient/1"
        )]
    );
    // An export's locations are the signed links made before: left as they are.
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_LOCATION,
        HeaderValue::from_static("https://gw.example/fhir/_page/signed"),
    );
    clean_headers(&mut headers, &rewriter, true);
    assert_eq!(
        headers[header::CONTENT_LOCATION],
        "https://gw.example/fhir/_page/signed"
    );
}

#[test]
fn only_an_answer_nobody_must_look_at_streams_through() {
    let plain = Duties {
        is_json: true,
        is_head: false,
        must_check: false,
        rewrites_urls: false,
        describes_security: false,
        audits_patients: false,
        consent: false,
    };
    assert!(plain.streams_through());
    for duty in [
        Duties {
            must_check: true,
            ..plain
        },
        Duties {
            rewrites_urls: true,
            ..plain
        },
        Duties {
            describes_security: true,
            ..plain
        },
        Duties {
            audits_patients: true,
            ..plain
        },
    ] {
        assert!(!duty.streams_through(), "{duty:?}");
    }
    // A HEAD has no body to rewrite, but under blocks the GET behind it is read and checked.
    let head = Duties {
        is_head: true,
        rewrites_urls: true,
        ..plain
    };
    assert!(head.streams_through());
    assert!(
        !Duties {
            consent: true,
            ..head
        }
        .streams_through()
    );
}

#[test]
fn an_answer_outside_the_compartment_is_refused_or_filtered_and_unreadable_is_refused() {
    let own = bytes(&observation("o1", "pat-anne"));
    assert_eq!(
        checked_answer(own.clone(), &anne_only(), true, FilterMode::Remove),
        Ok(own.clone())
    );
    let other = bytes(&observation("o2", "pat-bo"));
    assert_eq!(
        checked_answer(other, &anne_only(), true, FilterMode::Remove),
        Err(DenyReason::OutsideCompartment)
    );
    // Fail closed on what is not JSON, whatever it holds.
    assert_eq!(
        checked_answer(own.clone(), &anne_only(), false, FilterMode::Remove),
        Err(DenyReason::OutsideCompartment)
    );
    // A searchset loses the entry that is not hers.
    let searchset = json!({ "resourceType": "Bundle", "type": "searchset", "entry": [
        { "resource": observation("o1", "pat-anne") },
        { "resource": observation("o2", "pat-bo") },
    ]});
    let filtered =
        checked_answer(bytes(&searchset), &anne_only(), true, FilterMode::Remove).unwrap();
    let ids: Vec<Value> = json_of(&filtered)["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["resource"]["id"].clone())
        .collect();
    assert_eq!(ids, [json!("o1")]);
    // A granular scope's restriction refuses in its own words.
    let laboratory = Obligations {
        restriction: vec![("category".into(), "laboratory".into())],
        ..Obligations::default()
    };
    assert_eq!(
        checked_answer(own, &laboratory, true, FilterMode::Remove),
        Err(DenyReason::OutsideGranularScope)
    );
    // Nothing to check: untouched, even what is not JSON.
    let html = Bytes::from_static(b"<html>");
    assert_eq!(
        checked_answer(
            html.clone(),
            &Obligations::default(),
            false,
            FilterMode::Remove
        ),
        Ok(html)
    );
}

/// A batch of reads: its body, and the request as classified.
fn batch_of_reads(urls: &[&str]) -> (Vec<u8>, FhirRequest) {
    let entries: Vec<Value> = urls
        .iter()
        .map(|url| json!({ "request": { "method": "GET", "url": url } }))
        .collect();
    let body = json!({ "resourceType": "Bundle", "type": "batch", "entry": entries });
    let body = body.to_string().into_bytes();
    let mut request = classify("POST", "", None).unwrap();
    request
        .attach_body(Some("application/fhir+json"), &body)
        .unwrap();
    (body, request)
}

#[test]
fn a_batch_entry_the_backend_did_not_find_is_answered_in_the_gateways_words_under_blocks() {
    let (body, fhir) = batch_of_reads(&["Observation/o1", "Observation/o-gone"]);
    let allowed = Decision::Allow {
        granted_by: "user/*.rs".into(),
        obligations: Obligations::default(),
    };
    let (_, plan) = bundle::plan(&body, &[allowed.clone(), allowed], &[]).unwrap();
    let backend_outcome = json!({ "resourceType": "OperationOutcome", "issue": [
        { "severity": "error", "code": "not-found",
          "diagnostics": "HAPI-2001: Resource Observation/o-gone is gone (deleted)" } ] });
    let answer = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
        { "resource": observation("o1", "pat-anne"), "response": { "status": "200 OK" } },
        { "response": { "status": "410 Gone", "outcome": backend_outcome } },
    ]});
    let answer = bytes(&answer);
    let blocked = json_of(&merged_batch(&answer, &plan, &fhir, true, FilterMode::Remove).unwrap());
    assert_eq!(blocked["entry"][0]["resource"]["id"], "o1");
    assert_eq!(blocked["entry"][1]["response"]["status"], "404 Not Found");
    assert_eq!(
        blocked["entry"][1]["response"]["outcome"],
        not_found_outcome()
    );
    // Without blocks there is nothing a 410 could give away that the gateway guards.
    let open = json_of(&merged_batch(&answer, &plan, &fhir, false, FilterMode::Remove).unwrap());
    assert_eq!(open["entry"][1]["response"]["status"], "410 Gone");
}

#[test]
fn counts_that_would_tell_what_blocks_withhold_are_dropped() {
    let searchset = json!({ "resourceType": "Bundle", "type": "searchset", "total": 7,
        "link": [
            { "relation": "self", "url": "https://gw.example/fhir/Observation?code=x" },
            { "relation": "last", "url": "https://gw.example/fhir/Observation?code=x&_offset=5" },
        ],
        "entry": [ { "resource": observation("o1", "pat-anne") } ] });
    let search = classify("GET", "Observation", Some("code=x")).unwrap();
    let relations = |value: &Value| -> Vec<Value> {
        value["link"]
            .as_array()
            .unwrap()
            .iter()
            .map(|link| link["relation"].clone())
            .collect()
    };
    let both = json_of(&counts_hidden(bytes(&searchset), &search, true, true).unwrap());
    assert!(both.get("total").is_none());
    assert_eq!(relations(&both), [json!("self")]);
    assert_eq!(both["entry"][0]["resource"]["id"], "o1");
    // A count of named patients keeps its total; blocks still drop the last link.
    let total_kept = json_of(&counts_hidden(bytes(&searchset), &search, false, true).unwrap());
    assert_eq!(total_kept["total"], 7);
    assert_eq!(relations(&total_kept), [json!("self")]);
    // Without blocks, nothing to hide.
    let untouched = counts_hidden(bytes(&searchset), &search, false, false).unwrap();
    assert_eq!(json_of(&untouched), searchset);
    // Counts that cannot be shown gone (the answer is no JSON a tree can be read of: a lone
    // surrogate, which the raw readers before let through): refused, not passed on with them.
    let unreadable = Bytes::from(searchset.to_string().replace("\"o1\"", "\"\\udc00\""));
    assert!(matches!(
        counts_hidden(unreadable.clone(), &search, false, true),
        Err(ProxyError::UnreadableAnswer)
    ));
    assert!(counts_hidden(unreadable, &search, false, false).is_ok());
    // Nor an answer a plain tree would rebuild into other JSON than was read in it (a resource
    // whose type, wrapped in serde_json's raw value token, the bytes reader read as none).
    let wrapped = Bytes::from(searchset.to_string().replace(
        "\"resourceType\":\"Observation\"",
        r#""resourceType":{"$serde_json::private::RawValue":"\"Patient\""}"#,
    ));
    assert_ne!(wrapped, bytes(&searchset));
    assert!(matches!(
        counts_hidden(wrapped, &search, false, true),
        Err(ProxyError::UnreadableAnswer)
    ));
    assert!(counts_hidden(Bytes::new(), &search, true, true).is_ok());
    // A read of a stored Bundle is a resource, not a searchset: untouched.
    let read = classify("GET", "Bundle/b1", None).unwrap();
    assert_eq!(
        json_of(&counts_hidden(bytes(&searchset), &read, true, true).unwrap()),
        searchset
    );
}

/// Whose data a searchset holds, read while its URLs were rewritten, holds for it after its
/// counts are taken out (the consent-bound answer of every search), and for nothing else.
#[test]
fn the_patients_read_in_an_answer_hold_after_its_counts_are_taken_out_only() {
    let searchset = json!({ "resourceType": "Bundle", "type": "searchset", "total": 1,
        "entry": [ { "resource": observation("o1", "pat-anne") } ] });
    let search = classify("GET", "Observation", Some("code=x")).unwrap();
    let read_in = bytes(&searchset);
    let found = || Found {
        read_in: read_in.clone(),
        patients: Some(vec!["pat-anne".to_owned()]),
    };
    let counted = counts_hidden(read_in.clone(), &search, true, true).unwrap();
    assert!(json_of(&counted).get("total").is_none());
    let carried = found().carried(&read_in, &counted);
    assert!(same_bytes(&carried.read_in, &counted));
    assert_eq!(carried.patients, Some(vec!["pat-anne".to_owned()]));
    // Read in other bytes (an answer a filter changed before the counts went): not carried.
    let filtered = bytes(&searchset);
    let counted = counts_hidden(filtered.clone(), &search, true, true).unwrap();
    let stale = found().carried(&filtered, &counted);
    assert!(!same_bytes(&stale.read_in, &counted));
    assert!(same_bytes(&stale.read_in, &read_in));
}

fn outcome_rebuilt(answer: &Value, withheld: bool, rewriter: &UrlRewriter) -> Option<Vec<u8>> {
    crate::outcome::backend_outcome_rebuilt(
        answer,
        withheld,
        rewriter.backend_base(),
        rewriter.public_base(),
    )
}

/// An answer that is no success leaves as an OperationOutcome rebuilt of its issues' severity,
/// code and details: nothing else of the backend's, the backend's base as the gateway's, and
/// while data is withheld not the diagnostics that may name a resource the caller may not
/// learn of.
#[test]
fn an_outcome_leaves_rebuilt_of_what_it_says() {
    let rewriter = UrlRewriter::new("http://backend:8080/fhir", "https://gw.example/fhir");
    let backend = json!({ "resourceType": "OperationOutcome", "id": "x",
        "text": { "status": "generated", "div": "<div>Patient Bo</div>" },
        "contained": [{ "resourceType": "Patient", "id": "bo" }],
        "extension": [{ "url": "http://backend:8080/ext", "valueString": "secret" }],
        "issue": [{
            "severity": "error", "code": "processing",
            "details": { "coding": [{ "system": "http://x.example", "code": "HAPI-0550",
                                      "display": "conflict", "extension": [] }],
                         "text": "see http://backend:8080/fhir/Observation/5" },
            "diagnostics": "First reference found was resource Observation/5",
            "expression": ["Patient.link"],
            "extension": [{ "url": "x" }]
        }]
    });
    let open: Value =
        serde_json::from_slice(&outcome_rebuilt(&backend, false, &rewriter).unwrap()).unwrap();
    assert_eq!(
        open,
        json!({ "resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing",
            "details": { "coding": [{ "system": "http://x.example", "code": "HAPI-0550",
                                      "display": "conflict" }],
                         "text": "see https://gw.example/fhir/Observation/5" },
            "diagnostics": "First reference found was resource Observation/5",
            "expression": ["Patient.link"]
        }]})
    );
    let withheld: Value =
        serde_json::from_slice(&outcome_rebuilt(&backend, true, &rewriter).unwrap()).unwrap();
    // While data is withheld, only the codes: no words that may name a resource.
    assert_eq!(
        withheld,
        json!({ "resourceType": "OperationOutcome", "issue": [{
            "severity": "error", "code": "processing",
            "details": { "coding": [{ "system": "http://x.example", "code": "HAPI-0550" }] }
        }]})
    );
    // A detail with nothing left once its words go leaves no empty element behind.
    let worded = json!({ "resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "conflict",
        "details": { "text": "Observation/5 refers to it", "coding": [{ "display": "x" }] } }] });
    let told: Value =
        serde_json::from_slice(&outcome_rebuilt(&worded, true, &rewriter).unwrap()).unwrap();
    assert_eq!(
        told,
        json!({ "resourceType": "OperationOutcome",
                "issue": [{ "severity": "error", "code": "conflict" }] })
    );
    // Not an OperationOutcome, or one whose issues cannot be read: none.
    for other in [
        json!({ "resourceType": "Observation", "subject": { "reference": "Patient/bo" } }),
        json!({ "resourceType": "OperationOutcome" }),
        json!({ "resourceType": "OperationOutcome", "issue": ["x"] }),
        json!(["OperationOutcome"]),
    ] {
        assert!(
            outcome_rebuilt(&other, false, &rewriter).is_none(),
            "{other}"
        );
    }
}
