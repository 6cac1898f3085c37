//! What is enforced beyond scopes: `[policy]` (compartment filtering, the operator's rules
//! file) and `[consent]` (citizens' blocks). Only what the operator wrote, with its defaults:
//! nothing here reads the rules file (that is [`crate::runtime`]'s, at start).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

/// `[consent]`: citizens' blocks are FHIR `Consent` resources in the backend, enforced on
/// every interaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// How long a patient's loaded Consents are used before they are read again.
    #[serde(default = "defaults::consent_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How many patients' Consents are cached.
    #[serde(default = "defaults::consent_cache_entries")]
    pub cache_entries: usize,
    /// The Redis that replicas share (`redis[s]://…`): a citizen's block made on one replica
    /// is announced there, and every replica forgets her cached Consents at once. While a
    /// replica is not subscribed, it reads Consents for every access (no cache). Without it,
    /// another replica sees a block when its cache entry expires (`cache_ttl`).
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// `[relationship]`: a professional in one of `roles` reads a patient's data only with a
/// current treatment relationship, or by værdispring (README "Treatment relationship").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipConfig {
    /// The roles (the token's `role`, e.g. `7170` physician, `5166` nurse) the check binds;
    /// callers in other roles, systems and patient-context tokens are not checked.
    pub roles: Vec<String>,
    /// Where relationships are found: `fhir` (the backend's own EpisodeOfCare, Encounter,
    /// CareTeam, ServiceRequest and Appointment resources) or `http` (a relation service).
    pub source: RelationshipSource,
    /// `fhir`: how far back care that is over still counts.
    #[serde(default = "defaults::relationship_window", with = "humantime_serde")]
    pub window: Duration,
    /// `fhir`: how far ahead planned care (a booked appointment) already counts.
    #[serde(default = "defaults::relationship_ahead", with = "humantime_serde")]
    pub ahead: Duration,
    /// How long a relationship found is used before it is asked again.
    #[serde(default = "defaults::relationship_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long "no relationship" is used (short: new care should count soon).
    #[serde(
        default = "defaults::relationship_negative_ttl",
        with = "humantime_serde"
    )]
    pub negative_cache_ttl: Duration,
    /// How many (professional, patient) answers are cached.
    #[serde(default = "defaults::consent_cache_entries")]
    pub cache_entries: usize,
    /// `http`: the relation service (its `url`, timeouts, TLS and client certificate, as for a
    /// backend); when it cannot answer, the access is refused (503).
    #[serde(default)]
    pub service: Option<super::BackendConfig>,
}

/// `[mass_lookup]`: how many distinct patients one professional may reach in a sliding window
/// (README "Mass-lookup guard").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MassLookupConfig {
    /// Distinct patients per professional in `window`; one more is refused (or flagged).
    pub max_patients: u32,
    /// The sliding window.
    #[serde(default = "defaults::mass_lookup_window", with = "humantime_serde")]
    pub window: Duration,
    /// `refuse` (403 `too-many-patients`) or only `flag` (counted and logged).
    #[serde(default)]
    pub action: MassLookupAction,
    /// The roles it binds (a token's `role`); empty: every professional (a token with a role
    /// that is not the citizen's own).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Count across replicas in Redis (`redis://[:password@]host:port[/db]`); without it, or
    /// while Redis cannot answer, each replica counts on its own.
    #[serde(default)]
    pub redis_url: Option<String>,
}

/// See [`MassLookupConfig::action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MassLookupAction {
    /// Refuse the access that would pass the threshold.
    #[default]
    Refuse,
    /// Let it through, counted and logged.
    Flag,
}

/// See [`RelationshipConfig::source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelationshipSource {
    /// The backend's own resources.
    Fhir,
    /// A relation service.
    Http,
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// What happens to search results outside a patient-context token's compartment:
    /// `remove` them (and lower `total`), or `deny` the whole answer with 403.
    #[serde(default)]
    pub filtered_entries: FilteredEntries,
    /// Operator rules (TOML, `[[rule]]` tables), evaluated after scopes, deny by default.
    /// Without it, scopes alone decide.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// A rules file tried beside the enforced one: decided on every request, never enforced;
    /// each disagreement is counted and written to the decision log. A reload that names it as
    /// `rules_file` promotes it.
    #[serde(default)]
    pub shadow_rules_file: Option<PathBuf>,
    /// The fewest letters or digits a break-the-glass reason must hold to count (spaces,
    /// punctuation, control and format characters such as zero-width spaces are not counted).
    #[serde(default = "defaults::break_glass_min_reason")]
    pub break_glass_min_reason: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            filtered_entries: FilteredEntries::default(),
            rules_file: None,
            shadow_rules_file: None,
            break_glass_min_reason: defaults::break_glass_min_reason(),
        }
    }
}

/// `[decision_log]`: every decision (or only the shadow rules' disagreements) as JSON lines,
/// rotated by size (README "Decision log" gives the schema).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogConfig {
    /// The file; rotated files are `<path>.1` (newest) to `<path>.<keep>`.
    pub path: PathBuf,
    /// Rotate when the file would pass this size.
    #[serde(default = "defaults::decision_log_max_bytes")]
    pub max_bytes: u64,
    /// How many rotated files are kept.
    #[serde(default = "defaults::decision_log_keep")]
    pub keep: u32,
    /// `all` decisions, or only the shadow rules' `disagreements`.
    #[serde(default)]
    pub decisions: LoggedDecisions,
}

/// See [`DecisionLogConfig::decisions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoggedDecisions {
    /// Every decision.
    #[default]
    All,
    /// Only those where the shadow rules disagree.
    Disagreements,
}

/// See [`PolicyConfig::filtered_entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilteredEntries {
    /// Remove them.
    #[default]
    Remove,
    /// Refuse the answer.
    Deny,
}

/// `[[operation]]`: an operation the gateway lets through besides (or instead of) the ones it
/// declares itself (README "Operations"). Rows are tried in order, before the built-in ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationConfig {
    /// The name without the `$`, e.g. `match`.
    pub name: String,
    /// The resource types it is invoked on; none: any type (or the system level).
    #[serde(default)]
    pub resource_types: Vec<String>,
    /// `system`, `type` and/or `instance`.
    pub levels: Vec<String>,
    /// What it is: `reference` (answers with nobody's data; granted by reading its type),
    /// `search` (a search of its one type, pinned and checked as one), `instance` (a read of
    /// the instance it is invoked on), or `refused`.
    pub kind: String,
}
