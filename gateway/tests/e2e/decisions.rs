//! The decision log and shadow rules through the gateway: every decision a JSON line with the
//! request id and the rules met, never a token or a parameter's value; the shadow rules decided
//! beside the enforced ones, their disagreements counted and logged; a reload that names them
//! as `rules_file` enforces them; `check-config` refuses shadow rules it cannot log.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Gateway, Options, metric_value, send_batch};

const ENFORCED: &str = r#"
[[rule]]
name = "reads"
effect = "allow"
interactions = ["read", "search-type"]
"#;

const SHADOW: &str = r#"
[[rule]]
name = "patients only"
effect = "allow"
resource_types = ["Patient"]
interactions = ["read", "search-type"]
"#;

fn gateway(decision_log: &str) -> Gateway {
    Gateway::start_with(Options {
        extra_config: format!(
            "[policy]\nrules_file = \"rules.toml\"\nshadow_rules_file = \"rules-next.toml\"\n\n\
             [decision_log]\npath = \"decisions.jsonl\"\n{decision_log}"
        ),
        files: vec![
            ("rules.toml".into(), ENFORCED.into()),
            ("rules-next.toml".into(), SHADOW.into()),
        ],
        ..Options::default()
    })
}

/// The log's lines once it holds at least `count` (it is written by a thread of its own).
async fn logged(path: &Path, count: usize) -> Vec<Value> {
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        if lines.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines
}

fn request_id(answer: &crate::support::Answer) -> String {
    answer.headers["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn shadow_rules_are_decided_beside_the_enforced_ones_and_their_disagreements_logged() {
    let gateway = gateway("");
    let client = gateway.client();
    let token = gateway.token(json!({
        "scope": "user/*.rs", "role": "7170", "purpose_of_use": "TREATMENT",
    }));
    let patient = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(patient.status, 200);
    // The shadow rules would refuse this one; the enforced ones decide.
    let condition = client
        .get(
            "/fhir/Condition?patient=pat-bo&code=secret-code-value",
            Some(&token),
        )
        .await
        .unwrap();
    assert_eq!(condition.status, 200, "{}", condition.text());
    let batch = send_batch(
        &client,
        &token,
        json!({
            "resourceType": "Bundle", "type": "batch",
            "entry": [
                { "request": { "method": "GET", "url": "Patient/pat-bo" } },
                { "request": { "method": "GET", "url": "Condition/cond-bo-1" } },
            ],
        }),
    )
    .await;

    let path = gateway.dir.path().join("decisions.jsonl");
    let lines = logged(&path, 3).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let line = |answer: &crate::support::Answer| {
        let id = request_id(answer);
        lines
            .iter()
            .find(|line| line["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no line for {id}: {lines:#?}"))
            .clone()
    };

    let read = line(&patient);
    assert_eq!(read["schema"], "portvagt.decision/1");
    assert_eq!(read["listener"], "mtls");
    assert_eq!(read["input"]["interaction"], "read");
    assert_eq!(read["input"]["path"], "Patient/pat-anne");
    assert_eq!(read["input"]["resource_type"], "Patient");
    assert_eq!(read["input"]["caller"]["roles"], json!(["7170"]));
    assert_eq!(read["input"]["caller"]["purpose_of_use"], "TREATMENT");
    assert_eq!(read["result"]["decision"], "allow");
    assert_eq!(read["result"]["granted_by"], "user/*.rs");
    assert_eq!(read["result"]["rules"], json!(["reads"]));
    assert_eq!(read["shadow"]["agrees"], true);
    assert_eq!(read["shadow"]["rules"], json!(["patients only"]));

    let search = line(&condition);
    assert_eq!(search["input"]["params"], json!(["patient", "code"]));
    assert_eq!(search["result"]["decision"], "allow");
    assert_eq!(search["shadow"]["agrees"], false);
    assert_eq!(search["shadow"]["decision"], "deny");
    assert_eq!(search["shadow"]["reason"], "no-rule-allows");
    assert_eq!(search["shadow"]["rules"], json!([]));

    let entries = line(&batch);
    assert_eq!(entries["input"]["entries"], 2);
    assert_eq!(entries["result"]["entries"], json!(["allow", "allow"]));
    assert_eq!(
        entries["shadow"]["entries"],
        json!(["allow", "no-rule-allows"])
    );
    assert_eq!(entries["shadow"]["agrees"], false);

    // Never a token, never a parameter's value.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&token), "a token in the decision log");
    assert!(!text.contains("secret-code-value"), "{text}");

    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(
            &metrics,
            "portvagt_shadow_disagreements_total{enforced=\"allow\",shadow=\"no-rule-allows\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            "portvagt_shadow_disagreements_total{enforced=\"allow\",shadow=\"allow\"}"
        ),
        Some(1.0),
        "the batch: allowed by both, but not entry by entry"
    );
    assert_eq!(
        metric_value(&metrics, "portvagt_shadow_decisions_total"),
        Some(3.0)
    );

    // Promoted: the configuration names the shadow rules as the rules, and a reload enforces
    // them, without a restart.
    let config_path = gateway.dir.path().join("portvagt.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let promoted = config.replace(
        "rules_file = \"rules.toml\"\nshadow_rules_file = \"rules-next.toml\"\n",
        "rules_file = \"rules-next.toml\"\n",
    );
    assert_ne!(config, promoted);
    let staging = config_path.with_extension("staging");
    std::fs::write(&staging, promoted).unwrap();
    std::fs::rename(&staging, &config_path).unwrap();
    let mut refused = None;
    for _ in 0..80 {
        let answer = client
            .get("/fhir/Condition/cond-bo-1", Some(&token))
            .await
            .unwrap();
        if answer.status == 403 {
            refused = Some(answer.detail_code());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused.as_deref(), Some("no-rule-allows"));
    assert_eq!(
        client
            .get("/fhir/Patient/pat-anne", Some(&token))
            .await
            .unwrap()
            .status,
        200
    );
    let metrics = client.get("/metrics", None).await.unwrap().text();
    let tried = metric_value(&metrics, "portvagt_shadow_decisions_total");
    let patient = client
        .get("/fhir/Patient/pat-anne", Some(&token))
        .await
        .unwrap();
    assert_eq!(patient.status, 200);
    let metrics = client.get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_shadow_decisions_total"),
        tried,
        "no shadow rules any more"
    );
}

#[tokio::test]
async fn only_disagreements_are_logged_when_asked() {
    let gateway = gateway("decisions = \"disagreements\"\n");
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    for path in ["/fhir/Patient/pat-anne", "/fhir/Condition/cond-bo-1"] {
        assert_eq!(
            client.get(path, Some(&token)).await.unwrap().status,
            200,
            "{path}"
        );
    }
    // Refused alike by both: not a disagreement.
    let narrow = gateway.token(json!({ "scope": "user/Observation.rs" }));
    let denied = client
        .get("/fhir/Patient/pat-anne", Some(&narrow))
        .await
        .unwrap();
    assert_eq!(denied.status, 403, "{}", denied.text());
    // Let the writer catch up, then: only the Condition read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = logged(&gateway.dir.path().join("decisions.jsonl"), 1).await;
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["input"]["resource_type"], "Condition");
    assert_eq!(lines[0]["shadow"]["agrees"], false);
}

fn check_config(dir: &Path, policy: &str) -> (Option<i32>, String) {
    crate::support::check_config(
        dir,
        &format!("{}{policy}", crate::support::CHECKABLE_CONFIG),
    )
}

#[test]
fn check_config_validates_the_shadow_rules_and_where_they_are_logged() {
    let dir = crate::support::checkable_dir();
    std::fs::write(dir.path().join("rules.toml"), ENFORCED).unwrap();
    std::fs::write(
        dir.path().join("rules-next.toml"),
        "[[rule]]\nname = \"typo\"\neffect = \"allow\"\nresource_types = [\"Observaton\"]\n",
    )
    .unwrap();

    let (code, stderr) = check_config(
        dir.path(),
        "[policy]\nrules_file = \"rules.toml\"\nshadow_rules_file = \"rules-next.toml\"\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("policy.shadow_rules_file") && stderr.contains("rule[0] \"typo\""),
        "{stderr}"
    );
    assert!(stderr.contains("add [decision_log]"), "{stderr}");

    std::fs::write(dir.path().join("rules-next.toml"), SHADOW).unwrap();
    let (code, stderr) = check_config(
        dir.path(),
        "[policy]\nshadow_rules_file = \"rules-next.toml\"\n\n\
         [decision_log]\npath = \"no-such-folder/decisions.jsonl\"\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("decision_log.path") && stderr.contains("no such folder"),
        "{stderr}"
    );

    let (code, stderr) = check_config(
        dir.path(),
        "[decision_log]\npath = \"decisions.jsonl\"\ndecisions = \"disagreements\"\n",
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("decision_log.decisions"), "{stderr}");

    let (code, stderr) = check_config(
        dir.path(),
        "[policy]\nshadow_rules_file = \"rules-next.toml\"\n\n\
         [decision_log]\npath = \"decisions.jsonl\"\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !dir.path().join("decisions.jsonl").exists(),
        "check-config writes no log"
    );
}

/// Replaces the gateway's config file at once (as a config management tool would).
fn rewrite_config(gateway: &Gateway, change: impl Fn(&str) -> String) {
    let path = gateway.dir.path().join("portvagt.toml");
    let changed = change(&std::fs::read_to_string(&path).unwrap());
    let staging = path.with_extension("staging");
    std::fs::write(&staging, changed).unwrap();
    std::fs::rename(&staging, &path).unwrap();
}

/// Waits until `portvagt_config_reloads_total{component="rules",outcome=...}` passes `above`.
async fn rules_reloads(gateway: &Gateway, outcome: &str, above: f64) -> f64 {
    let line =
        format!("portvagt_config_reloads_total{{component=\"rules\",outcome=\"{outcome}\"}}");
    let mut value = 0.0;
    for _ in 0..80 {
        let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
        value = metric_value(&metrics, &line).unwrap_or(0.0);
        if value > above {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    value
}

#[tokio::test]
async fn a_reload_never_drops_rules_for_a_broken_or_shortened_config_and_watches_new_files() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[policy]\nrules_file = \"rules.toml\"\n".into(),
        files: vec![
            ("rules.toml".into(), SHADOW.into()),
            ("rules-3.toml".into(), ENFORCED.into()),
        ],
        ..Options::default()
    });
    let client = gateway.client();
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let condition = async || {
        client
            .get("/fhir/Condition/cond-bo-1", Some(&token))
            .await
            .unwrap()
            .status
    };
    assert_eq!(condition().await, 403);

    // Half written: no [policy] at all (it parses). Then not TOML. The rules stay each time.
    rewrite_config(&gateway, |config| {
        config.replace("[policy]\nrules_file = \"rules.toml\"\n", "")
    });
    assert!(rules_reloads(&gateway, "error", 0.0).await >= 1.0);
    assert_eq!(condition().await, 403);
    rewrite_config(&gateway, |config| format!("{config}\n[policy\n"));
    assert!(rules_reloads(&gateway, "error", 1.0).await >= 2.0);
    assert_eq!(condition().await, 403);

    // A config naming a new rules file: enforced, and that file watched from then on.
    rewrite_config(&gateway, |config| {
        format!(
            "{}\n[policy]\nrules_file = \"rules-3.toml\"\n",
            config.trim_end().trim_end_matches("[policy")
        )
    });
    let mut status = 0;
    for _ in 0..80 {
        status = condition().await.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let staging = gateway.dir.path().join("rules-3.staging");
    std::fs::write(&staging, SHADOW).unwrap();
    std::fs::rename(&staging, gateway.dir.path().join("rules-3.toml")).unwrap();
    for _ in 0..80 {
        status = condition().await.as_u16();
        if status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 403,
        "a change to the newly named rules file is seen"
    );
}
