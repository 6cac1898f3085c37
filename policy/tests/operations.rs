//! The operations table: each built-in row on its types and levels, the operator's rows first
//! (and checked), and the operator's table applied to batch entries too.

use portvagt_policy::classify;
use portvagt_policy::operations::{Kind, Level, Operation, Operations};
use portvagt_policy::request::RequestBody;
fn kind(method: &str, path: &str) -> Option<Kind> {
    classify(method, path, None).unwrap().operation_kind()
}

#[test]
fn each_operation_on_its_types_and_levels() {
    use Kind::*;
    assert_eq!(kind("GET", "ValueSet/$expand"), Some(Reference));
    assert_eq!(kind("POST", "ValueSet/vs-1/$expand"), Some(Reference));
    assert_eq!(kind("GET", "CodeSystem/$validate-code"), Some(Reference));
    assert_eq!(kind("GET", "CodeSystem/$lookup"), Some(Reference));
    assert_eq!(kind("GET", "CodeSystem/cs-1/$lookup"), None);
    assert_eq!(kind("GET", "ConceptMap/$translate"), Some(Reference));
    assert_eq!(kind("GET", "Observation/$expand"), None);
    assert_eq!(kind("GET", "$expand"), None);
    assert_eq!(
        kind("GET", "Patient/pat-anne/$everything"),
        Some(Everything)
    );
    assert_eq!(kind("GET", "Patient/$everything"), None);
    assert_eq!(kind("GET", "Encounter/e-1/$everything"), None);
    assert_eq!(kind("POST", "Observation/$validate"), Some(Reference));
    assert_eq!(kind("POST", "Observation/o-1/$validate"), Some(Instance));
    assert_eq!(kind("POST", "$validate"), None);
    assert_eq!(kind("GET", "Patient/pat-bo/$meta"), Some(Instance));
    assert_eq!(kind("GET", "Patient/$meta"), None);
    assert_eq!(kind("GET", "$meta"), None);
    assert_eq!(kind("GET", "Observation/$lastn"), Some(Search));
    assert_eq!(kind("GET", "Condition/$lastn"), None);
    assert_eq!(kind("GET", "DocumentReference/$docref"), Some(Search));
    assert_eq!(kind("GET", "Composition/c-1/$document"), Some(Instance));
    assert_eq!(kind("GET", "Composition/$document"), None);
    assert_eq!(kind("GET", "Observation"), None);
    assert_eq!(kind("GET", "$export"), Some(Export));
    assert_eq!(kind("GET", "Patient/$export"), Some(Export));
    assert_eq!(kind("GET", "Group/g-1/$export"), Some(Export));
    assert_eq!(kind("GET", "Group/$export"), None);
    assert_eq!(kind("GET", "Observation/$export"), None);
    assert_eq!(kind("GET", "Patient/pat-anne/$export"), None);
}

#[test]
fn operator_rows_come_first_and_are_checked() {
    let refuse = Operation::new("expand", &["ValueSet"], &[Level::Type], Kind::Refused).unwrap();
    let declare = Operation::new("match", &["Patient"], &[Level::Type], Kind::Search).unwrap();
    let table = Operations::with_rows(vec![refuse, declare]);
    // A built-in operation may be refused, never redefined; reference data is of types that
    // are nobody's record.
    for redefined in [
        Operation::new(
            "everything",
            &["Patient"],
            &[Level::Instance],
            Kind::Reference,
        ),
        Operation::new("lastn", &["Observation"], &[Level::Type], Kind::Search),
        Operation::new(
            "meta",
            &["Practitioner"],
            &[Level::Instance],
            Kind::Instance,
        ),
        Operation::new("x", &["Observation"], &[Level::Type], Kind::Reference),
        Operation::new("x", &[], &[Level::Type], Kind::Reference),
        Operation::new("x", &["Patient"], &[Level::Instance], Kind::Reference),
        Operation::new("x", &["Bundle"], &[Level::Type], Kind::Reference),
        Operation::new("x", &["Binary"], &[Level::Instance], Kind::Reference),
    ] {
        assert!(redefined.is_err(), "{redefined:?}");
    }
    assert!(Operation::new("x", &["Questionnaire"], &[Level::Type], Kind::Reference).is_ok());
    let mut request = classify("GET", "ValueSet/$expand", None).unwrap();
    request.apply_operations(&table);
    assert_eq!(request.operation_kind(), Some(Kind::Refused));
    // The instance level was not overridden: the built-in row still answers.
    let mut request = classify("GET", "ValueSet/vs-1/$expand", None).unwrap();
    request.apply_operations(&table);
    assert_eq!(request.operation_kind(), Some(Kind::Reference));
    let mut request = classify("POST", "Patient/$match", None).unwrap();
    assert_eq!(request.operation_kind(), None);
    request.apply_operations(&table);
    assert_eq!(request.operation_kind(), Some(Kind::Search));

    for (name, types, levels, kind) in [
        ("", &[][..], &[Level::Type][..], Kind::Reference),
        ("$x", &[], &[Level::Type], Kind::Reference),
        ("x", &[], &[], Kind::Reference),
        ("x", &["Nope"], &[Level::Type], Kind::Reference),
        ("x", &["Patient"], &[Level::System], Kind::Reference),
        ("x", &[], &[Level::Type], Kind::Search),
        ("x", &["Observation"], &[Level::Instance], Kind::Search),
        ("x", &["Observation"], &[Level::Type], Kind::Instance),
        ("x", &["Patient"], &[Level::Instance], Kind::Everything),
        ("x", &[], &[Level::System], Kind::Export),
    ] {
        assert!(
            Operation::new(name, types, levels, kind).is_err(),
            "{name:?} {types:?} {levels:?} {kind:?}"
        );
    }
}

#[test]
fn a_batch_entry_gets_the_operators_table_too() {
    let refuse = Operation::new("expand", &["ValueSet"], &[Level::Type], Kind::Refused).unwrap();
    let table = Operations::with_rows(vec![refuse]);
    let mut request = classify("POST", "", None).unwrap();
    let bundle = br#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"ValueSet/$expand?url=x"}}]}"#;
    request
        .attach_body(Some("application/fhir+json"), bundle)
        .unwrap();
    request.apply_operations(&table);
    let Some(RequestBody::Bundle { entries, .. }) = request.body() else {
        panic!("a bundle");
    };
    assert_eq!(entries[0].operation_kind(), Some(Kind::Refused));
}
