//! Operator rules through the gateway: after scopes, deny by default, and checked at start.

use serde_json::json;

use crate::support::{CHECKABLE_CONFIG, Gateway, Options, check_config, checkable_dir};

const RULES: &str = r#"
[[rule]]
name = "physicians and nurses read clinical data for treatment"
effect = "allow"
roles = ["7170", "5166"]
purposes = ["TREATMENT", "EMERGENCY"]
interactions = ["read", "vread", "search-type"]

[[rule]]
name = "only physicians read conditions"
effect = "deny"
roles = ["5166"]
resource_types = ["Condition"]
"#;

fn gateway_with_rules() -> Gateway {
    Gateway::start_with(Options {
        extra_config: "[policy]\nrules_file = \"rules.toml\"\n".into(),
        files: vec![("rules.toml".into(), RULES.into())],
        ..Default::default()
    })
}

#[tokio::test]
async fn rules_decide_after_scopes() {
    let gateway = gateway_with_rules();
    let client = gateway.client();
    let token = |role: &str, purpose: &str| {
        gateway.token(json!({ "scope": "user/*.cruds", "role": role, "purpose_of_use": purpose }))
    };
    let physician = token("7170", "TREATMENT");
    let nurse = token("5166", "TREATMENT");
    let secretary = token("9999", "TREATMENT");
    let research = token("7170", "RESEARCH");

    assert_eq!(
        client
            .get("/fhir/Condition/cond-bo-1", Some(&physician))
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client
            .get("/fhir/Observation?patient=pat-bo", Some(&nurse))
            .await
            .unwrap()
            .status,
        200
    );
    let cases = [
        (&nurse, "/fhir/Condition/cond-bo-1", "denied-by-rule"),
        (&secretary, "/fhir/Observation/obs-bo-bp", "no-rule-allows"),
        (&research, "/fhir/Observation/obs-bo-bp", "no-rule-allows"),
    ];
    for (token, path, code) in cases {
        let answer = client.get(path, Some(token)).await.unwrap();
        assert_eq!(
            (answer.status.as_u16(), answer.detail_code().as_str()),
            (403, code),
            "{path}"
        );
    }
    // Writes: scopes allow, no rule does.
    let create = crate::support::request(
        http::Method::POST,
        "/fhir/Observation",
        Some(&physician),
        Some(json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" } })),
    );
    let answer = client.send(create).await.unwrap();
    assert_eq!(
        (answer.status.as_u16(), answer.detail_code().as_str()),
        (403, "no-rule-allows")
    );
}

#[test]
fn check_config_names_the_bad_rule() {
    let dir = checkable_dir();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"typo\"\neffect = \"allow\"\nresource_types = [\"Observaton\"]\n",
    )
    .unwrap();
    let config = &format!("{CHECKABLE_CONFIG}[policy]\nrules_file = \"rules.toml\"\n");
    let (code, stderr) = check_config(dir.path(), config);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("policy.rules_file") && stderr.contains("rule[0] \"typo\": resource_types"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\nname = \"fine\"\neffect = \"allow\"\n",
    )
    .unwrap();
    let (code, stderr) = check_config(dir.path(), config);
    assert_eq!(code, Some(0), "{stderr}");
}
