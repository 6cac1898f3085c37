//! What was decided, for the operator: the decision log and shadow rules.
//!
//! - **Decision log** (`[decision_log]`): one JSON line per policy decision, the way OPA's
//!   decision logs work: the inputs summarised (who, through which listener, what interaction
//!   on what type, which parameter names: never their values, never a token), the outcome, the
//!   scope that granted it and the operator rules it met. The schema is in the README
//!   ("Decision log"); `schema` names its version.
//! - **Shadow rules** (`[policy] shadow_rules_file`): a second rules file decided on every
//!   request beside the enforced one and never enforced. Each disagreement is counted
//!   (`portvagt_shadow_disagreements_total{enforced, shadow}`) and written to the decision log
//!   with the request id, so a policy change is tried on live traffic before it is enforced.
//!
//! The decisions themselves are the policy crate's ([`portvagt_policy::decide_with_rules`]);
//! this module only asks it a second time and writes down what both said.

mod log;

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use portvagt_policy::{Channel, Decision, FhirRequest, RuleSet, ScopeContext, decide_with_rules};
use serde_json::{Value, json};

use self::log::LogWriter;
use crate::auth::Principal;
use crate::config::{ConfigError, DecisionLogConfig, LoggedDecisions};
use crate::metrics::Metrics;

/// The schema version of a decision log line.
pub const SCHEMA: &str = "portvagt.decision/1";

/// Operator rules, swapped whole on reload.
pub type SharedRules = Arc<ArcSwapOption<RuleSet>>;

/// The decision log and the shadow rules of one gateway.
#[derive(Debug)]
pub struct Decisions {
    /// The shadow rules, when configured.
    pub shadow: SharedRules,
    config: Option<DecisionLogConfig>,
    writer: OnceLock<LogWriter>,
    metrics: Arc<Metrics>,
}

impl Decisions {
    /// Nothing is written until [`Decisions::open`].
    pub fn new(
        config: Option<DecisionLogConfig>,
        shadow: Option<RuleSet>,
        metrics: Arc<Metrics>,
    ) -> Decisions {
        Decisions {
            shadow: Arc::new(ArcSwapOption::from(shadow.map(Arc::new))),
            config,
            writer: OnceLock::new(),
            metrics,
        }
    }

    /// Whether a decision log is configured (shadow rules need one).
    pub fn logs(&self) -> bool {
        self.config.is_some()
    }

    /// Whether a request's decision is looked at at all (the hot path asks this first).
    pub fn active(&self) -> bool {
        self.config.is_some() || self.shadow.load().is_some()
    }

    /// Starts writing the log (when serving; `check-config` never calls it).
    pub fn open(&self) -> Result<(), ConfigError> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        if self.writer.get().is_some() {
            return Ok(());
        }
        let writer = LogWriter::start(config, self.metrics.clone()).map_err(|e| {
            ConfigError::new(
                "decision_log.path",
                format!("{}: {e}", config.path.display()),
            )
        })?;
        let _ = self.writer.set(writer);
        Ok(())
    }

    /// Looks at one decision: decides again under the shadow rules (if any), counts a
    /// disagreement, and writes the line the log wants.
    pub fn observe(&self, observed: Observed<'_>, enforced: &Decision) {
        let shadow = self.shadow.load();
        let shadow = shadow.as_deref().map(|rules| {
            self.metrics.shadow_decisions.inc();
            let subject = observed.principal.policy_subject(observed.channel);
            let decision = decide_with_rules(
                subject,
                &observed.principal.caller(),
                rules,
                observed.request,
            );
            (rules, decision)
        });
        let agrees = shadow
            .as_ref()
            .is_none_or(|(_, decision)| decision.same_verdict(enforced));
        if let Some((_, decision)) = &shadow
            && !agrees
        {
            self.metrics
                .shadow_disagreements
                .with_label_values(&[enforced.outcome(), decision.outcome()])
                .inc();
        }
        let Some(config) = &self.config else {
            return;
        };
        if config.decisions == LoggedDecisions::Disagreements && agrees {
            return;
        }
        let Some(writer) = self.writer.get() else {
            return;
        };
        let mut line = record(&observed, enforced);
        if let Some((rules, decision)) = &shadow {
            let mut shadow = result(&observed, decision, Some(rules));
            shadow["agrees"] = json!(agrees);
            line["shadow"] = shadow;
        }
        writer.write(line.to_string());
    }
}

/// One decision's inputs, as the authorize layer has them.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The HTTP method.
    pub method: &'a str,
    /// Who asked.
    pub principal: &'a Principal,
    /// Through which listener.
    pub channel: Channel<'a>,
    /// What was asked, as classified.
    pub request: &'a FhirRequest,
    /// The enforced operator rules, if any.
    pub rules: Option<&'a RuleSet>,
}

/// The decision log line for `enforced` (without the shadow part).
fn record(observed: &Observed<'_>, enforced: &Decision) -> Value {
    let principal = observed.principal;
    let request = observed.request;
    let mut params: Vec<&str> = Vec::new();
    for (name, _) in request.params() {
        if !params.contains(&name.as_str()) {
            params.push(name);
        }
    }
    let entries = match request.body() {
        Some(portvagt_policy::request::RequestBody::Bundle { entries, .. }) => Some(entries.len()),
        _ => None,
    };
    let scopes: Vec<&str> = principal
        .scopes
        .iter()
        .map(|scope| scope.as_str())
        .collect();
    json!({
        "schema": SCHEMA,
        "time": now(),
        "request_id": observed.request_id,
        "listener": match observed.channel {
            Channel::Professional => "mtls",
            Channel::Citizen { .. } => "citizen",
        },
        "input": {
            "method": observed.method,
            "path": request.path(),
            "params": params,
            "interaction": request.interaction().as_str(),
            "resource_type": request.resource_type().map(|t| t.as_str()),
            "operation": request.operation(),
            "entries": entries,
            "caller": {
                "issuer": principal.issuer,
                "subject": subject(&principal.subject),
                "client_id": principal.client_id,
                "scopes": scopes,
                "patient": principal.patient,
                "fhir_user": principal.fhir_user,
                "roles": principal.roles,
                "purpose_of_use": principal.purpose_of_use,
                "organisation": principal.peer().cvr(),
                "certificate_bound": principal.certificate_bound,
            },
        },
        "result": result(observed, enforced, observed.rules),
    })
}

/// What one rule set decided: outcome, the granting scope, the rules met, and the entries'
/// outcomes for a batch or transaction.
fn result(observed: &Observed<'_>, decision: &Decision, rules: Option<&RuleSet>) -> Value {
    let (granted_by, entries) = match decision {
        Decision::Allow {
            granted_by,
            obligations,
        } => (
            Some(granted_by.as_str()).filter(|scope| !scope.is_empty()),
            obligations.entries.iter().map(Decision::outcome).collect(),
        ),
        Decision::Deny { .. } => (None, Vec::new()),
    };
    let contexts = contexts(observed.principal);
    let met: Option<Vec<&str>> = rules
        .map(|rules| rules.matching(&observed.principal.caller(), &contexts, observed.request));
    let mut result = json!({
        "decision": if decision.is_allow() { "allow" } else { "deny" },
        "reason": decision.deny_reason().map(|reason| reason.code()),
        "granted_by": granted_by,
        "rules": met,
    });
    if !entries.is_empty() {
        result["entries"] = json!(entries);
    }
    result
}

/// The token's `sub`, unless it is a CPR number (a SOSI card's `NameID` may be one): this file
/// is kept long and read by operators, who find the person by the request id in the audit
/// trail.
fn subject(sub: &str) -> &str {
    let digits: Vec<char> = sub.chars().filter(|c| *c != '-').collect();
    let cpr = digits.len() == 10
        && digits.iter().all(char::is_ascii_digit)
        && sub.chars().filter(|c| *c == '-').count() <= 1;
    if cpr { "cpr-withheld" } else { sub }
}

/// The contexts of the caller's scopes (`patient`, `user`, `system`), each once.
fn contexts(principal: &Principal) -> Vec<ScopeContext> {
    let mut contexts: Vec<ScopeContext> = Vec::with_capacity(3);
    for scope in principal.scopes.iter() {
        if !contexts.contains(&scope.context()) {
            contexts.push(scope.context());
        }
    }
    contexts
}

/// RFC 3339 UTC to the millisecond.
fn now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpr_number_is_never_the_logged_subject() {
        assert_eq!(subject("0501792275"), "cpr-withheld");
        assert_eq!(subject("050179-2275"), "cpr-withheld");
        assert_eq!(subject("mette.kjaer"), "mette.kjaer");
        assert_eq!(subject("05017922751"), "05017922751");
        assert_eq!(subject("050179--2275"), "050179--2275");
    }

    #[test]
    fn the_time_is_to_the_millisecond() {
        let time = now();
        let fraction = time.split('.').nth(1).unwrap_or_default();
        assert_eq!(fraction.len(), 4, "{time}");
        assert!(time.ends_with('Z'), "{time}");
    }
}
