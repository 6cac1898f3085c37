//! Operator rules on top of scopes: deny by default, deny wins, per batch entry.

use portvagt_policy::rules::{Caller, RuleSet, RulesFile};
use portvagt_policy::{DenyReason, ScopeSet, Subject, classify, decide_with_rules};

fn rules(toml_like: Vec<(&str, &str, Vec<&str>, Vec<&str>)>) -> RuleSet {
    // (name, effect, roles, interactions)
    let specs = toml_like
        .into_iter()
        .map(|(name, effect, roles, interactions)| {
            serde_json::from_value(serde_json::json!({
                "name": name, "effect": effect, "roles": roles, "interactions": interactions,
            }))
            .unwrap()
        })
        .collect();
    RuleSet::compile(&RulesFile { rules: specs }).unwrap()
}

#[test]
fn scopes_grant_and_rules_still_decide() {
    let scopes = ScopeSet::parse("user/*.cruds");
    let subject = Subject::new(&scopes, None);
    let set = rules(vec![
        (
            "physicians read",
            "allow",
            vec!["7170"],
            vec!["read", "search-type"],
        ),
        ("nobody deletes", "deny", vec![], vec!["delete"]),
    ]);
    let physician = vec!["7170".to_owned()];
    let nurse = vec!["5166".to_owned()];
    let as_physician = Caller {
        roles: &physician,
        ..Caller::default()
    };
    let as_nurse = Caller {
        roles: &nurse,
        ..Caller::default()
    };

    let read = classify("GET", "Observation/obs-1", None).unwrap();
    assert!(decide_with_rules(subject, &as_physician, &set, &read).is_allow());
    assert_eq!(
        decide_with_rules(subject, &as_nurse, &set, &read).deny_reason(),
        Some(DenyReason::NoRuleAllows)
    );

    let delete = classify("DELETE", "Observation/obs-1", None).unwrap();
    assert_eq!(
        decide_with_rules(subject, &as_physician, &set, &delete).deny_reason(),
        Some(DenyReason::DeniedByRule)
    );

    // Rules never widen what scopes grant.
    let narrow_scopes = ScopeSet::parse("user/Patient.rs");
    let narrow = Subject::new(&narrow_scopes, None);
    assert_eq!(
        decide_with_rules(narrow, &as_physician, &set, &read).deny_reason(),
        Some(DenyReason::InsufficientScope)
    );
}

#[test]
fn batch_entries_meet_the_rules_one_by_one() {
    let scopes = ScopeSet::parse("user/*.cruds");
    let subject = Subject::new(&scopes, None);
    let set = rules(vec![("reads only", "allow", vec![], vec!["read"])]);
    let mut batch = classify("POST", "", None).unwrap();
    let body = serde_json::json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Patient/p1" } },
        { "request": { "method": "DELETE", "url": "Patient/p1" } }
    ]});
    batch
        .attach_body(Some("application/fhir+json"), body.to_string().as_bytes())
        .unwrap();
    let decision = decide_with_rules(subject, &Caller::default(), &set, &batch);
    let portvagt_policy::Decision::Allow { obligations, .. } = decision else {
        panic!("{decision:?}")
    };
    assert!(obligations.entries[0].is_allow());
    assert_eq!(
        obligations.entries[1].deny_reason(),
        Some(DenyReason::NoRuleAllows)
    );
}

#[test]
fn only_a_rule_that_names_the_audit_log_opens_it_to_users() {
    let scopes = ScopeSet::parse("user/*.rs");
    let subject = Subject::new(&scopes, None);
    let compile = |resource_types: Vec<&str>| {
        let spec = serde_json::from_value(serde_json::json!({
            "name": "privacy officers", "effect": "allow", "roles": ["privacy-officer"],
            "resource_types": resource_types,
        }))
        .unwrap();
        RuleSet::compile(&RulesFile { rules: vec![spec] }).unwrap()
    };
    let officer = vec!["privacy-officer".to_owned()];
    let caller = Caller {
        roles: &officer,
        ..Caller::default()
    };
    let search = classify("GET", "AuditEvent", Some("patient=pat-anne")).unwrap();
    let broad = compile(vec![]);
    assert_eq!(
        decide_with_rules(subject, &caller, &broad, &search).deny_reason(),
        Some(DenyReason::AuditLogRestricted),
        "a rule on every type does not name the audit log"
    );
    let named = compile(vec!["AuditEvent"]);
    assert!(decide_with_rules(subject, &caller, &named, &search).is_allow());
    let write = classify("DELETE", "AuditEvent/ae-1", None).unwrap();
    let writer = compile(vec!["AuditEvent"]);
    let scopes = ScopeSet::parse("user/*.cruds");
    let subject = Subject::new(&scopes, None);
    assert_eq!(
        decide_with_rules(subject, &caller, &writer, &write).deny_reason(),
        Some(DenyReason::AuditLogRestricted)
    );
}
