//! Tests of the classifier: the interactions as a table (method and path to interaction,
//! resource type and id), and the paths, encodings and parameters it must refuse rather than
//! guess. Test code only: the classifier may not depend on anything here.

use super::*;

#[test]
fn interactions_are_classified() {
    // (method, path, interaction, resource type, id)
    type Case<'a> = (
        &'a str,
        &'a str,
        Interaction,
        Option<&'a str>,
        Option<&'a str>,
    );
    let cases: &[Case<'_>] = &[
        (
            "GET",
            "Patient/pat-1",
            Interaction::Read,
            Some("Patient"),
            Some("pat-1"),
        ),
        (
            "GET",
            "Patient/1/_history/2",
            Interaction::Vread,
            Some("Patient"),
            Some("1"),
        ),
        (
            "PUT",
            "Observation/o.1",
            Interaction::Update,
            Some("Observation"),
            Some("o.1"),
        ),
        (
            "PATCH",
            "Observation/o1",
            Interaction::Patch,
            Some("Observation"),
            Some("o1"),
        ),
        (
            "DELETE",
            "Observation/o1",
            Interaction::Delete,
            Some("Observation"),
            Some("o1"),
        ),
        (
            "GET",
            "Patient/1/_history",
            Interaction::HistoryInstance,
            Some("Patient"),
            Some("1"),
        ),
        (
            "GET",
            "Patient/_history",
            Interaction::HistoryType,
            Some("Patient"),
            None,
        ),
        ("GET", "_history", Interaction::HistorySystem, None, None),
        (
            "POST",
            "Observation",
            Interaction::Create,
            Some("Observation"),
            None,
        ),
        (
            "GET",
            "Observation",
            Interaction::SearchType,
            Some("Observation"),
            None,
        ),
        (
            "POST",
            "Observation/_search",
            Interaction::SearchType,
            Some("Observation"),
            None,
        ),
        ("GET", "", Interaction::SearchSystem, None, None),
        ("POST", "_search", Interaction::SearchSystem, None, None),
        ("GET", "metadata", Interaction::Capabilities, None, None),
        ("POST", "", Interaction::BatchOrTransaction, None, None),
        (
            "GET",
            "Patient/1/$everything",
            Interaction::Operation,
            Some("Patient"),
            Some("1"),
        ),
        ("POST", "$export", Interaction::Operation, None, None),
        (
            "POST",
            "Observation/$validate",
            Interaction::Operation,
            Some("Observation"),
            None,
        ),
    ];
    for (method, path, interaction, rtype, id) in cases {
        let request =
            classify(method, path, None).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(request.interaction(), *interaction, "{method} {path}");
        assert_eq!(
            request.resource_type().map(ResourceType::as_str),
            *rtype,
            "{method} {path}"
        );
        assert_eq!(request.id(), *id, "{method} {path}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    let cases: &[(&str, &str, ClassifyError)] = &[
        ("GET", "Patient/..", ClassifyError::DotSegment),
        ("GET", "Patient/%2e%2e", ClassifyError::DotSegment),
        ("GET", "Patient/.", ClassifyError::DotSegment),
        ("GET", "Patient%2F1", ClassifyError::EncodedSlash),
        ("GET", "Patient/1%2fx", ClassifyError::EncodedSlash),
        ("GET", "Patient/1%5Cx", ClassifyError::EncodedSlash),
        ("GET", "Patient//1", ClassifyError::EmptySegment),
        ("GET", "Patient/1/", ClassifyError::EmptySegment),
        ("GET", "patient/1", ClassifyError::UnknownResourceType),
        ("GET", "Patients", ClassifyError::UnknownResourceType),
        ("GET", "Patient/a_b", ClassifyError::MalformedId),
        ("GET", "Patient/%00", ClassifyError::BadEncoding),
        ("GET", "Patient/%zz", ClassifyError::BadEncoding),
        ("GET", "Patient/%ff", ClassifyError::BadEncoding),
        ("DELETE", "Patient", ClassifyError::MethodNotAllowed),
        (
            "GET",
            "Patient/1/Observation/2/x",
            ClassifyError::UnknownPath,
        ),
    ];
    for (method, path, expected) in cases {
        assert_eq!(
            classify(method, path, None).as_ref().err(),
            Some(expected),
            "{method} {path}"
        );
    }
    let long_id = format!("Patient/{}", "a".repeat(65));
    assert_eq!(
        classify("GET", &long_id, None).err(),
        Some(ClassifyError::MalformedId)
    );
}

#[test]
fn canonical_path_is_the_decoded_segments() {
    let request = classify("GET", "%50atient/pat%2Danne/_history/2", None).unwrap();
    assert_eq!(request.path(), "Patient/pat-anne/_history/2");
    assert_eq!(request.id(), Some("pat-anne"));
    assert_eq!(classify("GET", "", None).unwrap().path(), "");
    assert_eq!(
        classify("GET", "Patient/1/$everything", None)
            .unwrap()
            .path(),
        "Patient/1/$everything"
    );
}

#[test]
fn query_parameters_are_decoded_in_order() {
    let request = classify(
        "GET",
        "Observation",
        Some("patient=Patient%2Fpat-1&code=http://loinc.org%7C4548-4&_count=10&name=a+b"),
    )
    .unwrap();
    assert_eq!(
        request.params(),
        &[
            ("patient".to_owned(), "Patient/pat-1".to_owned()),
            ("code".to_owned(), "http://loinc.org|4548-4".to_owned()),
            ("_count".to_owned(), "10".to_owned()),
            ("name".to_owned(), "a b".to_owned()),
        ]
    );
    assert_eq!(
        request.param_values("patient").collect::<Vec<_>>(),
        ["Patient/pat-1"]
    );
}

#[test]
fn parameters_that_change_the_meaning_are_refused() {
    let cases = [
        ("_method=DELETE", ClassifyError::MethodOverride),
        ("_cascade=delete", ClassifyError::MethodOverride),
        ("_format=xml", ClassifyError::UnsupportedFormat),
        (
            "_format=application/fhir%2Bxml",
            ClassifyError::UnsupportedFormat,
        ),
        (
            "_include+=Observation:subject",
            ClassifyError::BadParameterName,
        ),
        ("na%20me=x", ClassifyError::BadParameterName),
        ("=x", ClassifyError::BadParameterName),
    ];
    for (query, expected) in cases {
        assert_eq!(
            classify("GET", "Observation", Some(query)).err(),
            Some(expected),
            "{query}"
        );
    }
    assert!(
        classify(
            "GET",
            "Observation",
            Some("_format=json&code:text=x&subject.name=a")
        )
        .is_ok()
    );
}

#[test]
fn a_leading_slash_is_an_empty_segment() {
    assert_eq!(
        classify("GET", "/Patient/1", None).err(),
        Some(ClassifyError::EmptySegment)
    );
}

#[test]
fn bad_query_encoding_is_refused() {
    assert_eq!(
        classify("GET", "Patient", Some("name=%E2%28")).err(),
        Some(ClassifyError::BadEncoding)
    );
    assert_eq!(
        classify("GET", "Patient", Some("name=%0a")).err(),
        Some(ClassifyError::BadEncoding)
    );
}
