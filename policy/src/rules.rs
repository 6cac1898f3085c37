//! Operator rules: a declarative policy evaluated AFTER the SMART scopes, deny by default.
//!
//! Scopes say what the app may do; rules say what this organisation allows: which professions
//! (Danish Autorisationsregister codes such as `7170` physician, `5166` nurse), for which
//! purposes of use, from which organisations (CVR of the client certificate) and clients, on
//! which resource types and interactions. A matching `deny` rule wins over any `allow`; with no
//! matching `allow`, the request is denied. Rules are read from TOML by the gateway into
//! [`RulesFile`] and compiled once ([`RuleSet::compile`]) with errors that name the rule.
//!
//! ```toml
//! [[rule]]
//! name = "physicians and nurses read clinical data for treatment"
//! effect = "allow"
//! roles = ["7170", "5166"]
//! purposes = ["TREATMENT", "EMERGENCY"]
//! resource_types = ["Observation", "Condition", "Encounter", "MedicationRequest", "Patient"]
//! interactions = ["read", "vread", "search-type"]
//! ```

use std::fmt;

use serde::Deserialize;

use crate::operations::Kind;
use crate::request::{FhirRequest, Interaction};
use crate::resource_type::ResourceType;
use crate::scope::ScopeContext;
use crate::shape::{is_everything, reaches_other_types};

/// A rules file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// The rules, in any order (deny wins).
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

/// One rule as written. Every list left out (or empty) matches anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// A unique name, quoted in errors and in the deny detail.
    pub name: String,
    /// `allow` or `deny`.
    pub effect: Effect,
    /// Profession codes (token claim `role`); any one must match.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Purposes of use (claim `purpose_of_use`), e.g. `TREATMENT`, `EMERGENCY`.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// OAuth clients (`client_id`).
    #[serde(default)]
    pub clients: Vec<String>,
    /// CVR numbers of the calling organisation (from the client certificate).
    #[serde(default)]
    pub organisations: Vec<String>,
    /// Scope contexts that granted the request: `patient`, `user`, `system`.
    #[serde(default)]
    pub contexts: Vec<String>,
    /// Resource types (R4 names).
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// Interactions, by their restful-interaction names (`read`, `search-type`, `create`, ...).
    #[serde(default)]
    pub interactions: Vec<String>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Allows, unless a deny rule also matches.
    Allow,
    /// Denies, whatever else matches.
    Deny,
}

/// A rule that does not compile, named by position and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Position in the file (0-based).
    pub index: usize,
    /// The rule's name, as written.
    pub name: String,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule[{}] {:?}: {}: {}",
            self.index, self.name, self.field, self.message
        )
    }
}

/// Every interaction name a rule may use.
const INTERACTIONS: [Interaction; 18] = [
    Interaction::Read,
    Interaction::Vread,
    Interaction::Update,
    Interaction::Patch,
    Interaction::Delete,
    Interaction::HistoryInstance,
    Interaction::HistoryType,
    Interaction::HistorySystem,
    Interaction::Create,
    Interaction::SearchType,
    Interaction::SearchCompartment,
    Interaction::ConditionalUpdate,
    Interaction::ConditionalPatch,
    Interaction::ConditionalDelete,
    Interaction::SearchSystem,
    Interaction::Capabilities,
    Interaction::BatchOrTransaction,
    Interaction::Operation,
];

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    effect: Effect,
    roles: Vec<String>,
    purposes: Vec<String>,
    clients: Vec<String>,
    organisations: Vec<String>,
    contexts: Vec<ScopeContext>,
    resource_types: Vec<ResourceType>,
    interactions: Vec<Interaction>,
}

/// Compiled rules, ready to evaluate.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

/// Who is calling, as the rules see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// Profession codes from the token.
    pub roles: &'a [String],
    /// Purpose of use from the token.
    pub purpose: Option<&'a str>,
    /// The OAuth client.
    pub client_id: Option<&'a str>,
    /// CVR of the client certificate's organisation.
    pub organisation: Option<&'a str>,
}

/// Why the rules refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleVerdict {
    /// An allow rule matched and no deny rule did.
    Allowed,
    /// A deny rule matched.
    Denied,
    /// No allow rule matched.
    NotAllowed,
}

impl RuleSet {
    /// Compiles a rules file; reports every bad rule.
    pub fn compile(file: &RulesFile) -> Result<RuleSet, Vec<RuleError>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (index, spec) in file.rules.iter().enumerate() {
            let mut error = |field: &'static str, message: String| {
                errors.push(RuleError {
                    index,
                    name: spec.name.clone(),
                    field,
                    message,
                });
            };
            if spec.name.trim().is_empty() {
                error("name", "must not be empty".into());
            }
            if file.rules[..index]
                .iter()
                .any(|other| other.name == spec.name)
            {
                error("name", "another rule has the same name".into());
            }
            let mut contexts = Vec::new();
            for context in &spec.contexts {
                match context.as_str() {
                    "patient" => contexts.push(ScopeContext::Patient),
                    "user" => contexts.push(ScopeContext::User),
                    "system" => contexts.push(ScopeContext::System),
                    other => error(
                        "contexts",
                        format!("unknown context {other:?} (patient, user, system)"),
                    ),
                }
            }
            let mut resource_types = Vec::new();
            for name in &spec.resource_types {
                match ResourceType::parse(name) {
                    Some(t) => resource_types.push(t),
                    None => error(
                        "resource_types",
                        format!("{name:?} is not an R4 resource type"),
                    ),
                }
            }
            let mut interactions = Vec::new();
            for name in &spec.interactions {
                match INTERACTIONS.iter().find(|i| i.as_str() == name) {
                    Some(i) => interactions.push(*i),
                    None => {
                        let known: Vec<&str> = INTERACTIONS.iter().map(|i| i.as_str()).collect();
                        error(
                            "interactions",
                            format!("unknown interaction {name:?} (one of {})", known.join(", ")),
                        );
                    }
                }
            }
            rules.push(Rule {
                name: spec.name.clone(),
                effect: spec.effect,
                roles: spec.roles.clone(),
                purposes: spec.purposes.clone(),
                clients: spec.clients.clone(),
                organisations: spec.organisations.clone(),
                contexts,
                resource_types,
                interactions,
            });
        }
        if errors.is_empty() {
            Ok(RuleSet { rules })
        } else {
            Err(errors)
        }
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are none (then every request is denied).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Evaluates the rules for a request a scope of `context` granted.
    pub fn evaluate(
        &self,
        caller: &Caller<'_>,
        context: ScopeContext,
        request: &FhirRequest,
    ) -> RuleVerdict {
        let mut allowed = false;
        for rule in self
            .rules
            .iter()
            .filter(|rule| rule.matches(caller, context, request))
        {
            match rule.effect {
                Effect::Deny => return RuleVerdict::Denied,
                Effect::Allow => allowed = true,
            }
        }
        if allowed {
            RuleVerdict::Allowed
        } else {
            RuleVerdict::NotAllowed
        }
    }

    /// The names of the rules that match a request in any of `contexts` (the contexts of the
    /// caller's scopes), deny rules first: what a decision log shows as the rules it met.
    pub fn matching(
        &self,
        caller: &Caller<'_>,
        contexts: &[ScopeContext],
        request: &FhirRequest,
    ) -> Vec<&str> {
        let matched = |effect: Effect| {
            self.rules.iter().filter(move |rule| {
                rule.effect == effect
                    && contexts
                        .iter()
                        .any(|context| rule.matches(caller, *context, request))
            })
        };
        matched(Effect::Deny)
            .chain(matched(Effect::Allow))
            .map(|rule| rule.name.as_str())
            .collect()
    }

    /// Whether an allow rule that names the request's resource type explicitly (not by an
    /// empty list) matches, and no deny rule does.
    pub fn names_type(
        &self,
        caller: &Caller<'_>,
        context: ScopeContext,
        request: &FhirRequest,
    ) -> bool {
        let matching = || {
            self.rules
                .iter()
                .filter(|rule| rule.matches(caller, context, request))
        };
        matching().all(|rule| rule.effect == Effect::Allow)
            && matching().any(|rule| !rule.resource_types.is_empty())
    }

    /// Whether a deny rule matches a Bundle itself (checked before its entries).
    pub fn denies_bundle(&self, caller: &Caller<'_>, request: &FhirRequest) -> bool {
        self.rules
            .iter()
            .any(|rule| rule.effect == Effect::Deny && rule.matches_in(caller, None, request))
    }
}

impl Rule {
    fn matches(&self, caller: &Caller<'_>, context: ScopeContext, request: &FhirRequest) -> bool {
        self.matches_in(caller, Some(context), request)
    }

    /// `context: None` (a Bundle, decided before any scope): a deny rule matches whatever its
    /// contexts say.
    fn matches_in(
        &self,
        caller: &Caller<'_>,
        context: Option<ScopeContext>,
        request: &FhirRequest,
    ) -> bool {
        fn any_of(list: &[String], value: Option<&str>) -> bool {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|item| item == v))
        }
        let roles_match =
            self.roles.is_empty() || caller.roles.iter().any(|role| self.roles.contains(role));
        roles_match
            && any_of(&self.purposes, caller.purpose)
            && any_of(&self.clients, caller.client_id)
            && any_of(&self.organisations, caller.organisation)
            && (self.contexts.is_empty() || context.is_none_or(|c| self.contexts.contains(&c)))
            && self.types_match(request)
            // A declared search or instance read (`$lastn`, `$meta`) is what it acts as too.
            && (self.interactions.is_empty()
                || self.interactions.contains(&request.interaction())
                || self.interactions.contains(&request.acts_as()))
    }
}

impl Rule {
    /// A request that may touch several types (no type, `*`, includes, chains, `$everything`)
    /// matches a deny rule on types, and no allow rule on types.
    fn types_match(&self, request: &FhirRequest) -> bool {
        if self.resource_types.is_empty() {
            return true;
        }
        // An export is of the types it exports (`_type`), not of the path's `Patient`/`Group`.
        let named = match request.operation_kind() {
            Some(Kind::Export) => crate::operations::export_type(request.params()),
            _ => request.resource_type(),
        };
        let single_type =
            named.filter(|_| !reaches_other_types(request) && !is_everything(request));
        match single_type {
            Some(t) => self.resource_types.contains(&t),
            None => self.effect == Effect::Deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::classify;

    fn spec(name: &str, effect: Effect) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            effect,
            roles: vec![],
            purposes: vec![],
            clients: vec![],
            organisations: vec![],
            contexts: vec![],
            resource_types: vec![],
            interactions: vec![],
        }
    }

    fn rules(specs: Vec<RuleSpec>) -> RuleSet {
        RuleSet::compile(&RulesFile { rules: specs }).unwrap()
    }

    #[test]
    fn matching_names_deny_rules_first_and_only_in_the_callers_contexts() {
        let read = classify("GET", "Observation/o1", None).unwrap();
        let roles = vec!["7170".to_owned()];
        let caller = Caller {
            roles: &roles,
            ..Caller::default()
        };
        let mut physicians = spec("physicians", Effect::Allow);
        physicians.roles = vec!["7170".into()];
        let mut systems_only = spec("systems only", Effect::Allow);
        systems_only.contexts = vec!["system".into()];
        let mut no_observations = spec("no observations", Effect::Deny);
        no_observations.resource_types = vec!["Observation".into()];
        let mut nurses = spec("nurses", Effect::Allow);
        nurses.roles = vec!["5166".into()];
        let set = rules(vec![physicians, systems_only, no_observations, nurses]);
        assert_eq!(
            set.matching(&caller, &[ScopeContext::User], &read),
            vec!["no observations", "physicians"]
        );
        assert_eq!(
            set.matching(&caller, &[ScopeContext::User, ScopeContext::System], &read),
            vec!["no observations", "physicians", "systems only"]
        );
        assert!(set.matching(&caller, &[], &read).is_empty());
    }

    #[test]
    fn deny_by_default_and_deny_wins() {
        let read = classify("GET", "Observation/o1", None).unwrap();
        let roles = vec!["7170".to_owned()];
        let caller = Caller {
            roles: &roles,
            purpose: Some("TREATMENT"),
            ..Caller::default()
        };
        assert_eq!(
            RuleSet::default().evaluate(&caller, ScopeContext::User, &read),
            RuleVerdict::NotAllowed
        );

        let mut physicians = spec("physicians", Effect::Allow);
        physicians.roles = vec!["7170".into()];
        physicians.interactions = vec!["read".into()];
        let set = rules(vec![physicians.clone()]);
        assert_eq!(
            set.evaluate(&caller, ScopeContext::User, &read),
            RuleVerdict::Allowed
        );
        let nurse = vec!["5166".to_owned()];
        assert_eq!(
            set.evaluate(
                &Caller {
                    roles: &nurse,
                    ..caller
                },
                ScopeContext::User,
                &read
            ),
            RuleVerdict::NotAllowed
        );

        let mut no_research = spec("no research", Effect::Deny);
        no_research.purposes = vec!["RESEARCH".into()];
        let set = rules(vec![physicians, no_research]);
        let research = Caller {
            purpose: Some("RESEARCH"),
            ..caller
        };
        assert_eq!(
            set.evaluate(&research, ScopeContext::User, &read),
            RuleVerdict::Denied
        );
        assert_eq!(
            set.matching(&research, &[ScopeContext::User], &read),
            ["no research", "physicians"]
        );
    }

    #[test]
    fn types_interactions_contexts_clients_and_organisations_narrow_a_rule() {
        let mut rule = spec("lab system writes observations", Effect::Allow);
        rule.resource_types = vec!["Observation".into()];
        rule.interactions = vec!["create".into()];
        rule.contexts = vec!["system".into()];
        rule.clients = vec!["lab".into()];
        rule.organisations = vec!["12345678".into()];
        let set = rules(vec![rule]);
        let caller = Caller {
            client_id: Some("lab"),
            organisation: Some("12345678"),
            ..Caller::default()
        };
        let create = classify("POST", "Observation", None).unwrap();
        assert_eq!(
            set.evaluate(&caller, ScopeContext::System, &create),
            RuleVerdict::Allowed
        );
        assert_eq!(
            set.evaluate(&caller, ScopeContext::User, &create),
            RuleVerdict::NotAllowed
        );
        let condition = classify("POST", "Condition", None).unwrap();
        assert_eq!(
            set.evaluate(&caller, ScopeContext::System, &condition),
            RuleVerdict::NotAllowed
        );
        let other_org = Caller {
            organisation: Some("87654321"),
            ..caller
        };
        assert_eq!(
            set.evaluate(&other_org, ScopeContext::System, &create),
            RuleVerdict::NotAllowed
        );
    }

    #[test]
    fn deny_rules_on_types_catch_requests_that_may_touch_them() {
        let mut no_conditions = spec("nurses do not see conditions", Effect::Deny);
        no_conditions.resource_types = vec!["Condition".into()];
        let set = rules(vec![spec("everything else", Effect::Allow), no_conditions]);
        let caller = Caller::default();
        for (method, path, query) in [
            ("GET", "", Some("_type=Condition")),
            ("GET", "_history", None),
            ("GET", "Patient/p1/*", None),
            ("GET", "Patient/p1/$everything", None),
            ("GET", "Patient", Some("_revinclude=Condition:subject")),
            // An export is of the types it exports, not of the path's Patient or Group.
            ("GET", "Patient/$export", Some("_type=Condition")),
            ("GET", "Group/g1/$export", None),
        ] {
            let request = classify(method, path, query).unwrap();
            assert_eq!(
                set.evaluate(&caller, ScopeContext::User, &request),
                RuleVerdict::Denied,
                "{path} {query:?}"
            );
        }
        let observation = classify("GET", "Observation/o1", None).unwrap();
        assert_eq!(
            set.evaluate(&caller, ScopeContext::User, &observation),
            RuleVerdict::Allowed
        );
        // An allow rule on Patient does not grant an export of every type from `Patient/`.
        let mut patients = spec("patients only", Effect::Allow);
        patients.resource_types = vec!["Patient".into()];
        let set = rules(vec![patients]);
        let export = classify("GET", "Patient/$export", None).unwrap();
        assert_eq!(
            set.evaluate(&caller, ScopeContext::System, &export),
            RuleVerdict::NotAllowed
        );
    }

    #[test]
    fn errors_name_the_rule_and_field() {
        let mut bad = spec("typo", Effect::Allow);
        bad.resource_types = vec!["Observaton".into()];
        bad.interactions = vec!["reed".into()];
        bad.contexts = vec!["admin".into()];
        let errors = RuleSet::compile(&RulesFile {
            rules: vec![spec("ok", Effect::Allow), bad, spec("ok", Effect::Deny)],
        })
        .unwrap_err();
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("rule[1] \"typo\": resource_types:")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("rule[1] \"typo\": interactions:")
                    && t.contains("search-type")),
            "{texts:?}"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("rule[1] \"typo\": contexts:")),
            "{texts:?}"
        );
        assert!(
            texts.iter().any(|t| t.starts_with("rule[2] \"ok\": name:")),
            "{texts:?}"
        );
    }
}
