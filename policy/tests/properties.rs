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
        let decision = decide(Subject { scopes: &scopes, patient: None }, &request);
        if scopes.is_empty() {
            let denied = matches!(decision, portvagt_policy::Decision::Deny { .. });
            prop_assert!(denied, "{:?}", decision);
        }
    }
}
