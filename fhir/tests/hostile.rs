//! What an XML body may not do: declare a document type (entities, external subsets), nest
//! without bound, carry processing instructions or CDATA, or be anything but an R4 resource in
//! the FHIR namespace. Each is refused before the element model reads it, never expanded,
//! fetched or recursed into.

use portvagt_fhir::{MAX_DEPTH, XmlError, xml_to_json};
use serde_json::{Value, json};

fn json_of(xml: &str) -> Value {
    serde_json::from_slice(&xml_to_json(xml.as_bytes()).unwrap()).unwrap()
}

#[test]
fn a_resource_in_xml_is_its_json_twin() {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
        <Observation xmlns="http://hl7.org/fhir">
          <id value="obs-1"/>
          <status value="final"/>
          <code><text value="puls"/></code>
          <subject><reference value="Patient/pat-anne"/></subject>
          <valueQuantity><value value="72.0"/><unit value="/min"/></valueQuantity>
          <note><text value="a"/></note>
        </Observation>"#;
    assert_eq!(
        json_of(xml),
        json!({
            "resourceType": "Observation", "id": "obs-1", "status": "final",
            "code": { "text": "puls" },
            "subject": { "reference": "Patient/pat-anne" },
            "valueQuantity": { "value": 72.0, "unit": "/min" },
            "note": [ { "text": "a" } ]
        })
    );
}

#[test]
fn a_batch_in_xml_keeps_its_entries_and_their_resources() {
    let xml = r#"<Bundle xmlns="http://hl7.org/fhir">
          <type value="batch"/>
          <entry><request><method value="GET"/><url value="Patient/pat-bo"/></request></entry>
          <entry>
            <resource><Observation><status value="final"/><code><text value="x"/></code>
              <subject><reference value="Patient/pat-bo"/></subject></Observation></resource>
            <request><method value="POST"/><url value="Observation"/></request>
          </entry>
        </Bundle>"#;
    let bundle = json_of(xml);
    assert_eq!(bundle["type"], "batch");
    assert_eq!(bundle["entry"][0]["request"]["url"], "Patient/pat-bo");
    assert_eq!(
        bundle["entry"][1]["resource"]["resourceType"],
        "Observation"
    );
    assert_eq!(
        bundle["entry"][1]["resource"]["subject"]["reference"],
        "Patient/pat-bo"
    );
}

#[test]
fn document_types_entities_and_external_references_are_refused_unread() {
    for xml in [
        // Billion laughs.
        r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>
           <Patient xmlns="http://hl7.org/fhir"><id value="&lol2;"/></Patient>"#,
        // XXE: a file, a URL.
        r#"<!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]>
           <Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>"#,
        r#"<!DOCTYPE Patient SYSTEM "http://127.0.0.1:9/evil.dtd"><Patient xmlns="http://hl7.org/fhir"/>"#,
        // A parameter entity.
        r#"<!DOCTYPE Patient [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]><Patient xmlns="http://hl7.org/fhir"/>"#,
    ] {
        assert_eq!(
            xml_to_json(xml.as_bytes()),
            Err(XmlError::DocumentType),
            "{xml}"
        );
    }
    // An entity never declared is not expanded either.
    let undeclared =
        r#"<Patient xmlns="http://hl7.org/fhir"><id value="&x;"/></Patient>"#.as_bytes();
    assert!(matches!(
        xml_to_json(undeclared),
        Err(XmlError::NotFhirXml(_))
    ));
}

#[test]
fn nesting_without_bound_is_refused_before_anything_recurses() {
    let depth = 100_000;
    let xml = format!(
        r#"<Patient xmlns="http://hl7.org/fhir">{}{}</Patient>"#,
        "<extension>".repeat(depth),
        "</extension>".repeat(depth)
    );
    assert_eq!(xml_to_json(xml.as_bytes()), Err(XmlError::TooDeep));
    // Just within the bound is for the element model to judge (and it says: not FHIR).
    let within = format!(
        r#"<Patient xmlns="http://hl7.org/fhir">{}{}</Patient>"#,
        "<extension>".repeat(MAX_DEPTH - 1),
        "</extension>".repeat(MAX_DEPTH - 1)
    );
    assert_ne!(xml_to_json(within.as_bytes()), Err(XmlError::TooDeep));
}

#[test]
fn what_fhir_xml_never_holds_is_refused() {
    for xml in [
        // Processing instructions and CDATA.
        r#"<?xml-stylesheet href="x"?><Patient xmlns="http://hl7.org/fhir"/>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><id><![CDATA[x]]></id></Patient>"#,
        // Not the FHIR namespace, or none.
        r#"<Patient xmlns="http://example.org/fhir"><id value="x"/></Patient>"#,
        r#"<Patient><id value="x"/></Patient>"#,
        // Not a resource; not well-formed; text where FHIR has attributes; empty.
        r#"<Nonsense xmlns="http://hl7.org/fhir"><id value="x"/></Nonsense>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><id value="x"></Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><id>x</id></Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><unknownElement value="1"/></Patient>"#,
        "",
        "not xml at all",
        // Cut short, or a second resource after the first: not read as far as it goes.
        r#"<Observation xmlns="http://hl7.org/fhir"><status value="final">"#,
        r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/></Patient><Patient xmlns="http://hl7.org/fhir"><id value="b"/></Patient>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"/><Patient xmlns="http://hl7.org/fhir"/>"#,
        r#"<Patient xmlns="http://hl7.org/fhir"/>trailing"#,
        // Two resources in one wrapper (the second one's content would be read into the
        // resource around it), or a resource beside an element.
        r#"<Observation xmlns="http://hl7.org/fhir"><contained><Patient><id value="p"/></Patient><Patient><id value="q"/></Patient></contained></Observation>"#,
        r#"<Bundle xmlns="http://hl7.org/fhir"><type value="batch"/><entry><resource><id value="x"/><Observation><status value="final"/></Observation></resource></entry></Bundle>"#,
        // End tags that do not match.
        r#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/></Observation>"#,
    ] {
        assert!(
            matches!(xml_to_json(xml.as_bytes()), Err(XmlError::NotFhirXml(_))),
            "{xml}: {:?}",
            xml_to_json(xml.as_bytes())
        );
    }
    // Another encoding than UTF-8 is not read as if it were.
    let latin1 =
        b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Patient xmlns=\"http://hl7.org/fhir\"><id value=\"\xe6\"/></Patient>";
    assert!(xml_to_json(latin1).is_err());
}

#[test]
fn json_that_is_no_fhir_resource_has_no_xml_form() {
    for json in [
        r#"{"a":1}"#,
        "[]",
        "not json",
        r#"{"resourceType":"Nonsense","id":"x"}"#,
    ] {
        assert!(
            matches!(
                portvagt_fhir::json_to_xml(json.as_bytes()),
                Err(XmlError::NotFhirJson(_))
            ),
            "{json}"
        );
    }
    // `resourceType` anywhere in the object is enough.
    let sorted = r#"{"active":true,"id":"p1","resourceType":"Patient"}"#;
    let xml = String::from_utf8(portvagt_fhir::json_to_xml(sorted.as_bytes()).unwrap()).unwrap();
    assert!(
        xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?>"#),
        "{xml}"
    );
    let tight: String = xml.lines().map(str::trim).collect();
    assert!(
        tight.ends_with(r#"<Patient xmlns="http://hl7.org/fhir"><id value="p1"/><active value="true"/></Patient>"#),
        "{xml}"
    );
}

#[test]
fn an_element_repeated_where_r4_allows_one_is_refused() {
    for (xml, element) in [
        (
            r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><subject><reference value="Patient/pat-anne"/></subject><subject><reference value="Patient/pat-bo"/></subject></Observation>"#,
            "subject",
        ),
        (
            r#"<Observation xmlns="http://hl7.org/fhir"><subject><reference value="Patient/pat-anne"/></subject><status value="final"/><subject><reference value="Patient/pat-bo"/></subject></Observation>"#,
            "subject",
        ),
        (
            r#"<Observation xmlns="http://hl7.org/fhir"><subject><reference value="Patient/pat-anne"/><reference value="Patient/pat-bo"/></subject></Observation>"#,
            "reference",
        ),
        (
            r#"<Observation xmlns="http://hl7.org/fhir"><id value="a"/><id value="b"/></Observation>"#,
            "id",
        ),
        // Inside a contained resource and a batch entry too.
        (
            r#"<Observation xmlns="http://hl7.org/fhir"><contained><Patient><id value="p"/><active value="true"/><active value="false"/></Patient></contained></Observation>"#,
            "active",
        ),
        (
            r#"<Bundle xmlns="http://hl7.org/fhir"><type value="batch"/><entry><resource><Observation><status value="final"/><subject><reference value="Patient/pat-anne"/></subject><subject><reference value="Patient/pat-bo"/></subject></Observation></resource><request><method value="POST"/><url value="Observation"/></request></entry></Bundle>"#,
            "subject",
        ),
    ] {
        assert_eq!(
            xml_to_json(xml.as_bytes()),
            Err(XmlError::Repeated(element.to_owned())),
            "{xml}"
        );
    }
    // Where R4 repeats an element, it repeats.
    let notes = json_of(
        r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><note><text value="a"/></note><note><text value="b"/></note></Observation>"#,
    );
    assert_eq!(notes["note"].as_array().map(Vec::len), Some(2));
}

#[test]
fn what_would_crash_or_stall_the_reader_is_refused_first() {
    // A million attributes: the reader's duplicate check is quadratic.
    let attributes: String = (0..100_000).map(|i| format!(" a{i}=\"\"")).collect();
    let xml = format!(r#"<Patient xmlns="http://hl7.org/fhir"{attributes}/>"#);
    let started = std::time::Instant::now();
    assert!(matches!(
        xml_to_json(xml.as_bytes()),
        Err(XmlError::NotFhirXml(_))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Not UTF-8 where the reader unwraps it (a namespace, a prefix).
    for xml in [
        &b"<Patient xmlns=\"http://hl7.org/fhi\xff\"/>"[..],
        &b"<a\xff:Patient xmlns:a\xff=\"http://hl7.org/fhir\"/>"[..],
        &b"<Patient xmlns=\"http://hl7.org/fhir\" a\xff:b=\"c\"/>"[..],
    ] {
        assert!(matches!(xml_to_json(xml), Err(XmlError::NotFhirXml(_))));
    }
    // An empty resource in its wrapper: the reader would swallow the element after it.
    let swallowing = r#"<Observation xmlns="http://hl7.org/fhir"><contained><Patient/></contained><status value="final"/><code><text value="x"/></code></Observation>"#;
    assert!(matches!(
        xml_to_json(swallowing.as_bytes()),
        Err(XmlError::NotFhirXml(_))
    ));
}

#[test]
fn json_whose_xml_would_say_something_else_is_not_written_as_xml() {
    for json in [
        // A resourceType that is markup.
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"contained":[{"resourceType":"Binary/></contained><identifier><value value=\"forged\"/></identifier><contained><Binary"}]}"#,
        // A narrative that is not one XHTML div.
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">ok</div><div xmlns=\"http://www.w3.org/1999/xhtml\">forged</div>"}}"#,
        r#"{"resourceType":"Patient","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>&nbsp;</div>"}}"#,
        // A narrative with attributes only (the writer unwraps its missing value).
        r#"{"resourceType":"Patient","text":{"status":"generated","_div":{"id":"n"}}}"#,
        // An integer the element model wraps.
        r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueInteger":4294967338}"#,
        // A control character XML cannot hold.
        "{\"resourceType\":\"Patient\",\"id\":\"p1\",\"name\":[{\"text\":\"a\\u0001b\"}]}",
    ] {
        assert!(
            matches!(
                portvagt_fhir::json_to_xml(json.as_bytes()),
                Err(XmlError::NotFhirJson(_))
            ),
            "{json}"
        );
    }
    // Multi-line text stays multi-line for XML readers that normalise attribute values.
    let note = r#"{"resourceType":"Patient","id":"p1","name":[{"text":"line one\nline\ttwo"}]}"#;
    let xml = String::from_utf8(portvagt_fhir::json_to_xml(note.as_bytes()).unwrap()).unwrap();
    assert!(xml.contains(r#"value="line one&#10;line&#9;two""#), "{xml}");
    assert_eq!(json_of(&xml)["name"][0]["text"], "line one\nline\ttwo");
}
