//! Property tests: the classifier and the scope parser never panic, and what the classifier
//! accepts is never ambiguous.

use portvagt_policy::{ScopeSet, Subject, classify, decide};
use proptest::prelude::*;

fn path_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Patient".to_owned()),
        Just("Observation".to_owned()),
        Just("_history".to_owned()),
        Just("_search".to_owned()),
        Just("$everything".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2E".to_owned()),
        Just("%2F".to_owned()),
        Just("".to_owned()),
        "[A-Za-z0-9%._$-]{1,12}",
    ]
}

proptest! {
    #[test]
    fn classify_never_panics(method in "(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)", path in "\\PC{0,80}", query in proptest::option::of("\\PC{0,80}")) {
        let _ = classify(&method, &path, query.as_deref());
    }

    #[test]
    fn accepted_paths_are_unambiguous(segments in proptest::collection::vec(path_segment(), 0..5), method in "(GET|POST|PUT|DELETE)") {
        let path = segments.join("/");
        if let Ok(request) = classify(&method, &path, None) {
            let lower = path.to_ascii_lowercase();
            prop_assert!(!lower.contains("%2f"));
            prop_assert!(segments.len() == 1 || !segments.iter().any(String::is_empty));
            prop_assert!(!segments.iter().any(|s| s == ".." || s.eq_ignore_ascii_case("%2e%2e")));
            if let Some(id) = request.id() {
                prop_assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            }
        }
    }

    #[test]
    fn scope_parsing_never_panics_and_unparsed_scopes_grant_nothing(claim in "\\PC{0,120}", path in "(Patient|Observation)/[a-z0-9-]{1,10}") {
        let scopes = ScopeSet::parse(&claim);
        let request = classify("GET", &path, None).unwrap();
        let decision = decide(Subject::new(&scopes, None), &request);
        if scopes.is_empty() {
            let denied = matches!(decision, portvagt_policy::Decision::Deny { .. });
            prop_assert!(denied, "{:?}", decision);
        }
    }
}

fn patient_param() -> impl Strategy<Value = (String, String)> {
    let names = prop_oneof![
        Just("patient"),
        Just("subject"),
        Just("subject:Patient"),
        Just("performer"),
        Just("_id"),
        Just("code"),
        Just("_count"),
        Just("patient:missing"),
        Just("_include"),
        Just("_revinclude"),
    ];
    let values = prop_oneof![
        Just("pat-anne"),
        Just("Patient/pat-anne"),
        Just("pat-bo"),
        Just("Patient/pat-bo"),
        Just("pat-anne,pat-bo"),
        Just("Observation:subject"),
        Just("x"),
    ];
    (names, values).prop_map(|(n, v)| (n.to_owned(), v.to_owned()))
}

fn request_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Observation".to_owned()),
        Just("Patient".to_owned()),
        Just("Condition".to_owned()),
        Just("Patient/pat-anne".to_owned()),
        Just("Patient/pat-bo".to_owned()),
        Just("Patient/pat-bo/Observation".to_owned()),
        Just("Patient/pat-anne/Observation".to_owned()),
        Just("Patient/pat-bo/$everything".to_owned()),
        Just("Observation/_history".to_owned()),
        Just("".to_owned()),
    ]
}

proptest! {
    /// Whatever a patient-context token asks, an allowed request never names another patient:
    /// not in the path, and not in any parameter; and it is always checked or narrowed.
    #[test]
    fn patient_scoped_decisions_never_name_another_patient(
        path in request_path(),
        params in proptest::collection::vec(patient_param(), 0..4),
        scopes in prop_oneof![Just("patient/*.rs"), Just("patient/Observation.rs patient/Patient.rs"), Just("patient/*.cruds")],
    ) {
        let query: Vec<String> = params.iter().map(|(n, v)| format!("{n}={}", v.replace('/', "%2F"))).collect();
        let query = query.join("&");
        let Ok(request) = classify("GET", &path, (!query.is_empty()).then_some(query.as_str())) else {
            return Ok(());
        };
        let scopes = ScopeSet::parse(scopes);
        if let portvagt_policy::Decision::Allow { obligations, .. } = decide(Subject::new(&scopes, Some("pat-anne")), &request) {
            prop_assert!(!request.path().contains("pat-bo"), "{} allowed", request.path());
            let is_patient_type = request.resource_type().is_some_and(|t| t.as_str() == "Patient");
            for (name, value) in request.params() {
                // Parameters that can name a patient: the reference ones, and `_id` on Patient
                // (elsewhere `_id` is that type's own id, and `code=pat-bo` names nothing).
                let base = name.split(':').next().unwrap_or(name);
                let names_a_patient = if is_patient_type {
                    base == "_id"
                } else {
                    matches!(base, "patient" | "subject" | "performer")
                };
                if !names_a_patient {
                    continue;
                }
                prop_assert!(!value.contains("pat-bo"), "{}={} allowed on {}", name, value, request.path());
            }
            // Every patient-context allow has its answer checked, shared reference data included
            // (a `_revinclude` on shared data reaches patients' records).
            prop_assert_eq!(obligations.compartment.as_deref(), Some("pat-anne"));
        }
    }
}
