//! What the gateway builds from its configuration at start: TLS config, token verifier,
//! backend client, metrics, local endpoints. Kept apart from [`Config`] (what the operator said),
//! as linkerd2-proxy keeps `Config` apart from its runtime handles.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::Uri;
use portvagt_policy::operations::{Kind, Level, Operation, Operations};
use portvagt_policy::{RuleSet, RulesFile};

use crate::admin::Admin;
use crate::audit::Auditor;
use crate::auth::TokenVerifier;
use crate::backend::Backend;
use crate::config::{Config, ConfigError};
use crate::consent::ConsentStore;
use crate::exchange::TokenExchange;
use crate::layers::authenticate::{ListenerAudiences, RouteRules};
use crate::layers::authorize::SharedRules;
use crate::layers::rate_limit::RateLimiter;
use crate::mass_lookup::MassLookupGuard;
use crate::metrics::Metrics;
use crate::paging::Pager;
use crate::relationship::Relationships;
use crate::routing::{SharedRoutes, build_routes};
use crate::smart::SmartDocuments;

/// Everything built at start, shared by every connection.
#[derive(Debug)]
pub struct Runtime {
    /// The configuration it was built from.
    pub config: Config,
    /// The client-facing TLS configuration; swapped whole on reload (new connections get the
    /// new one, open ones keep theirs).
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// The citizen listener's TLS configuration (no client certificates), when `[citizen]` is
    /// configured; reloaded with the other.
    pub citizen_tls: Option<Arc<ArcSwap<rustls::ServerConfig>>>,
    /// The access-token verifier.
    pub verifier: Arc<TokenVerifier>,
    /// Per-path authentication demands (`[[route]]`).
    pub routes: Arc<RouteRules>,
    /// Which `aud` values each listener accepts.
    pub audiences: ListenerAudiences,
    /// The SMART configuration and CapabilityStatement security description.
    pub smart: Arc<SmartDocuments>,
    /// The backend and its client.
    pub backend: Arc<Backend>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Local endpoints.
    pub admin: Arc<Admin>,
    /// The FHIR base URL clients see, without a trailing slash.
    pub public_base_url: String,
    /// The path of the FHIR base on this listener (e.g. `/fhir`).
    pub fhir_base_path: String,
    /// Operator rules, when configured.
    pub rules: SharedRules,
    /// The decision log and the shadow rules.
    pub decisions: Arc<crate::decisions::Decisions>,
    /// Exports requests' spans, when `[tracing] otlp_endpoint` is set.
    pub tracer: Option<Arc<crate::otlp::OtlpExporter>>,
    /// SAML token exchange (`POST /token`), when configured.
    pub token_exchange: Option<Arc<TokenExchange>>,
    /// The audit trail, when configured.
    pub auditor: Option<Arc<Auditor>>,
    /// Citizens' blocks, when enforced.
    pub consent: Option<Arc<ConsentStore>>,
    /// The treatment relationship professionals need, when checked.
    pub relationships: Option<Arc<Relationships>>,
    /// The mass-lookup guard, when configured.
    pub mass_lookup: Option<Arc<MassLookupGuard>>,
    /// Where requests go, most specific first; the last is the main backend. Swapped whole
    /// when the config file's `[[upstream]]`s change.
    pub upstreams: SharedRoutes,
    /// The config file, when the runtime was built from one (reload reads it again).
    pub config_path: Option<std::path::PathBuf>,
    /// The files reloads read, as they were when this runtime was built.
    pub loaded_files: Vec<(std::path::PathBuf, crate::watched::Fingerprint)>,
    /// Per-client rate limits, when configured.
    pub rate_limiter: Option<Arc<RateLimiter>>,
    /// Signs and opens the paging links handed to clients.
    pub pager: Arc<Pager>,
    /// The operations let through: the operator's `[[operation]]` rows, then the built-in ones.
    pub operations: Arc<Operations>,
}

impl Runtime {
    /// Builds the runtime for a listener bound to `local_addr`. Reports every problem found, not
    /// just the first, each naming its config field.
    pub fn build(config: Config, local_addr: SocketAddr) -> Result<Runtime, Vec<ConfigError>> {
        let loaded_files = crate::watched::fingerprints(&config);
        let mut errors = Vec::new();
        let public_base_url = config
            .server
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("https://{local_addr}/fhir"))
            .trim_end_matches('/')
            .to_owned();
        let fhir_base_path = match https_base_path(&public_base_url) {
            Some(path) => path,
            None => {
                errors.push(ConfigError::new(
                    "server.public_base_url",
                    "must be an https:// URL without a query",
                ));
                String::new()
            }
        };
        if config.issuers.is_empty() && config.token_exchange.is_none() {
            errors.push(ConfigError::new(
                "issuer",
                "at least one [[issuer]] (or [token_exchange]) is required",
            ));
        }
        if config.limits.max_concurrent_requests == 0 {
            errors.push(ConfigError::new(
                "limits.max_concurrent_requests",
                "must be at least 1",
            ));
        }
        let tls = crate::tls::server_config(&config.tls)
            .map_err(|e| errors.push(e))
            .ok();
        let citizen_tls = match &config.citizen {
            None => None,
            Some(citizen) => {
                for (index, name) in citizen.resource_types.iter().enumerate() {
                    if portvagt_policy::ResourceType::parse(name).is_none() {
                        errors.push(ConfigError::new(
                            format!("citizen.resource_types[{index}]"),
                            format!("{name:?} is not a FHIR R4 resource type"),
                        ));
                    }
                }
                // A block nobody enforces, or that she cannot see she made, is worse than none.
                if citizen.blocks && config.consent.is_none() {
                    errors.push(ConfigError::new(
                        "citizen.blocks",
                        "needs [consent]: a block the gateway does not enforce blocks nobody",
                    ));
                }
                if citizen.blocks && config.audit.is_none() {
                    errors.push(ConfigError::new(
                        "citizen.blocks",
                        "needs [audit]: a citizen's blocks are taken from her access log",
                    ));
                }
                if config.server.listen.port() != 0 && citizen.listen == config.server.listen {
                    errors.push(ConfigError::new(
                        "citizen.listen",
                        "must differ from server.listen",
                    ));
                }
                crate::tls::citizen_server_config(&config.tls)
                    .map_err(|e| errors.push(e))
                    .ok()
                    .map(|tls| Arc::new(ArcSwap::new(tls)))
            }
        };
        let metrics = Arc::new(Metrics::new());
        let verifier = TokenVerifier::new(&config.issuers, metrics.clone())
            .map_err(|e| errors.push(e))
            .ok();
        let routes = RouteRules::new(&config.routes)
            .map_err(|e| errors.push(e))
            .ok();
        let audiences = ListenerAudiences::from_config(&config)
            .map_err(|e| errors.push(e))
            .ok();
        let redis = crate::redis::RedisSettings::from_config(config.redis.as_ref())
            .map_err(|e| errors.push(e))
            .unwrap_or_default();
        let backend = Backend::new(&config.backend)
            .map_err(|e| errors.push(e))
            .ok();
        let mut rules_from = |path: &Option<std::path::PathBuf>, field: &str| match path {
            None => None,
            Some(path) => match load_rules(path, field) {
                Ok(rules) => Some(rules),
                Err(mut rule_errors) => {
                    errors.append(&mut rule_errors);
                    None
                }
            },
        };
        let rules = rules_from(&config.policy.rules_file, "policy.rules_file").map(Arc::new);
        let shadow_rules = rules_from(&config.policy.shadow_rules_file, "policy.shadow_rules_file");
        if let Err(error) = check_decision_log(&config) {
            errors.push(error);
        }
        if let Some(url) = config
            .citizen
            .as_ref()
            .and_then(|citizen| citizen.public_base_url.as_deref())
            && https_base_path(url).as_deref() != Some(fhir_base_path.as_str())
        {
            errors.push(ConfigError::new(
                "citizen.public_base_url",
                format!(
                    "an https:// URL whose path is the FHIR base's, {fhir_base_path:?}: the \
                     citizen listener serves the same paths"
                ),
            ));
        }
        let tracer = crate::otlp::OtlpExporter::new(&config.tracing, metrics.clone())
            .map_err(|e| errors.push(e))
            .ok()
            .flatten()
            .map(Arc::new);
        let operations = operations(&config.operations)
            .map_err(|mut e| errors.append(&mut e))
            .ok();
        let pager = Pager::from_config(&config.paging)
            .map_err(|e| errors.push(e))
            .ok();
        // The same problem found twice (the listeners share `[tls]`) is reported once.
        let mut seen = std::collections::HashSet::new();
        errors.retain(|error| seen.insert(error.to_string()));
        let (
            Some(tls),
            Some(mut verifier),
            Some(routes),
            Some(audiences),
            Some(backend),
            Some(pager),
            Some(operations),
            true,
        ) = (
            tls,
            verifier,
            routes,
            audiences,
            backend,
            pager,
            operations,
            errors.is_empty(),
        )
        else {
            return Err(errors);
        };
        let backend = Arc::new(backend);
        let upstreams: SharedRoutes = Arc::new(ArcSwap::from_pointee(build_routes(
            &config,
            &fhir_base_path,
            &public_base_url,
            &backend,
        )?));
        let token_exchange = match &config.token_exchange {
            None => None,
            Some(exchange) => {
                let exchange =
                    TokenExchange::new(exchange, backend.clone(), metrics.clone(), &redis)
                        .map_err(|e| vec![e])?;
                // Portvagt accepts the tokens it issues, as one more (always bound) issuer.
                let (issuer, keys) = exchange.own_issuer();
                verifier
                    .add_held_issuer(&issuer, keys)
                    .map_err(|e| vec![e])?;
                Some(Arc::new(exchange))
            }
        };
        let smart = Arc::new(SmartDocuments::new(
            &config,
            config
                .smart_issuer()
                .and_then(|issuer| verifier.remote_source(issuer)),
        ));

        let auditor = match &config.audit {
            None => {
                tracing::warn!("no [audit] section: accesses are NOT recorded in an audit trail");
                None
            }
            Some(audit) => Some(Arc::new(
                Auditor::new(audit, &public_base_url, metrics.clone()).map_err(|e| vec![e])?,
            )),
        };
        let admin = Arc::new(Admin::new(
            &config,
            &fhir_base_path,
            metrics.clone(),
            upstreams.clone(),
            smart.clone(),
            auditor.clone(),
        ));
        let consent = config
            .consent
            .as_ref()
            .map(|consent| ConsentStore::new(consent, metrics.clone(), &redis).map(Arc::new))
            .transpose()
            .map_err(|e| vec![e])?;
        let relationships = config
            .relationship
            .as_ref()
            .map(|relationship| Relationships::new(relationship, metrics.clone()).map(Arc::new))
            .transpose()
            .map_err(|e| vec![e])?;
        let mass_lookup = config
            .mass_lookup
            .as_ref()
            .map(|guard| MassLookupGuard::new(guard, metrics.clone(), &redis).map(Arc::new))
            .transpose()
            .map_err(|e| vec![e])?;
        let rate_limiter = config
            .rate_limit
            .as_ref()
            .map(|limits| RateLimiter::new(limits, metrics.clone(), &redis).map(Arc::new))
            .transpose()
            .map_err(|e| vec![e])?;
        let decisions = Arc::new(crate::decisions::Decisions::new(
            config.decision_log.clone(),
            shadow_rules,
            metrics.clone(),
        ));
        Ok(Runtime {
            config,
            tls: Arc::new(ArcSwap::new(tls)),
            citizen_tls,
            verifier: Arc::new(verifier),
            routes: Arc::new(routes),
            audiences,
            smart,
            backend,
            metrics,
            admin,
            public_base_url,
            fhir_base_path,
            rules: Arc::new(ArcSwapOption::new(rules)),
            decisions,
            tracer,
            token_exchange,
            auditor,
            consent,
            relationships,
            mass_lookup,
            upstreams,
            config_path: None,
            loaded_files,
            rate_limiter,
            pager: Arc::new(pager),
            operations: Arc::new(operations),
        })
    }
}

impl Runtime {
    /// Remembers the config file this runtime was built from, so a reload reads its routes
    /// again when it changes.
    pub fn watch_config_file(&mut self, path: &std::path::Path) {
        let path = path.to_path_buf();
        let print = crate::watched::fingerprint(&path);
        self.loaded_files.push((path.clone(), print));
        self.config_path = Some(path);
    }

    /// Opens what serving needs beyond configuration: the audit spool (locked for this
    /// process). `check-config` does not call it, so it never touches a live spool.
    pub fn open(&self) -> Result<(), ConfigError> {
        self.decisions.open()?;
        if let Some(tracer) = &self.tracer {
            tracer.start();
        }
        if let Some(auditor) = &self.auditor {
            auditor
                .open()
                .map_err(|e| ConfigError::new("audit.spool_dir", e.to_string()))?;
        }
        Ok(())
    }
}

/// The path of an `https://` base URL with a host and no query, without a trailing slash.
fn https_base_path(url: &str) -> Option<String> {
    let uri = url.parse::<Uri>().ok()?;
    (uri.scheme_str() == Some("https") && uri.host().is_some() && uri.query().is_none())
        .then(|| uri.path().trim_end_matches('/').to_owned())
}

/// Shadow rules need somewhere to write their disagreements; the decision log needs a folder.
fn check_decision_log(config: &Config) -> Result<(), ConfigError> {
    if config.policy.shadow_rules_file.is_none()
        && config
            .decision_log
            .as_ref()
            .is_some_and(|log| log.decisions == crate::config::LoggedDecisions::Disagreements)
    {
        return Err(ConfigError::new(
            "decision_log.decisions",
            "\"disagreements\" are the shadow rules': without policy.shadow_rules_file \
             nothing would be written (\"all\" writes every decision)",
        ));
    }
    let Some(log) = &config.decision_log else {
        return match config.policy.shadow_rules_file {
            Some(_) => Err(ConfigError::new(
                "policy.shadow_rules_file",
                "the shadow rules' disagreements are written to the decision log: add \
                 [decision_log] (decisions = \"disagreements\" writes only those)",
            )),
            None => Ok(()),
        };
    };
    let folder = log
        .path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !folder.is_dir() {
        return Err(ConfigError::new(
            "decision_log.path",
            format!("{}: no such folder", folder.display()),
        ));
    }
    if log.path.is_dir() {
        return Err(ConfigError::new(
            "decision_log.path",
            format!("{} is a folder; name a file", log.path.display()),
        ));
    }
    if log.max_bytes < 4096 {
        return Err(ConfigError::new(
            "decision_log.max_bytes",
            "at least 4096: a decision is a few hundred bytes",
        ));
    }
    Ok(())
}

/// Reads and compiles an operator rules file; each problem names `field` and the rule.
pub(crate) fn load_rules(path: &std::path::Path, field: &str) -> Result<RuleSet, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::new(field, format!("{}: {e}", path.display()))])?;
    let file: RulesFile = toml::from_str(&text).map_err(|e| {
        vec![ConfigError::new(
            field,
            format!("{}: {}", path.display(), e.to_string().trim()),
        )]
    })?;
    RuleSet::compile(&file).map_err(|errors| {
        errors
            .into_iter()
            .map(|error| ConfigError::new(field, format!("{}: {error}", path.display())))
            .collect()
    })
}

/// The operations table: `[[operation]]` rows ahead of the built-in ones. Every problem is
/// reported, each naming its row and field.
fn operations(rows: &[crate::config::OperationConfig]) -> Result<Operations, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut table = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let field = |name: &str| format!("operation[{index}].{name}");
        let before = errors.len();
        let levels: Vec<Level> = row
            .levels
            .iter()
            .filter_map(|level| {
                let parsed = Level::parse(level);
                if parsed.is_none() {
                    errors.push(ConfigError::new(
                        field("levels"),
                        format!("{level:?} is not system, type or instance"),
                    ));
                }
                parsed
            })
            .collect();
        let kind = Kind::parse(&row.kind);
        if kind.is_none() {
            errors.push(ConfigError::new(
                field("kind"),
                format!(
                    "{:?} is not reference, search, instance or refused",
                    row.kind
                ),
            ));
        }
        let (Some(kind), true) = (kind, errors.len() == before) else {
            continue;
        };
        let types: Vec<&str> = row.resource_types.iter().map(String::as_str).collect();
        match Operation::new(&row.name, &types, &levels, kind) {
            Ok(operation) => table.push(operation),
            Err(message) => errors.push(ConfigError::new(format!("operation[{index}]"), message)),
        }
    }
    if errors.is_empty() {
        Ok(Operations::with_rows(table))
    } else {
        Err(errors)
    }
}
