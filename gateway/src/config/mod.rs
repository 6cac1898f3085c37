//! Operator configuration: one TOML file, parsed into typed structs with `deny_unknown_fields`.
//!
//! This module is what the operator SAID. [`crate::runtime::Runtime`] is what the gateway BUILT
//! from it at start (loaded keys, TLS config, clients). Validation that needs the file system
//! (certificates, keys) happens there, with errors that name the config field.
//!
//! The sections are in files by concern (`server`, `auth`, `backend`, `audit`, `policy`, and
//! their `defaults`) and re-exported here, so every type is `crate::config::X`; this file holds
//! the whole [`Config`], its loading and [`ConfigError`].

mod audit;
mod auth;
mod backend;
mod defaults;
mod policy;
mod server;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::audit::{AuditConfig, AuditFailureMode, AuditShipConfig};
pub use self::auth::{
    ClaimNames, IntrospectionConfig, IssuerConfig, PinnedSts, SmartConfig, TokenExchangeConfig,
    TrustedSts,
};
pub use self::backend::{BackendConfig, IdentityAssertionConfig, RouteConfig, UpstreamConfig};
pub use self::policy::{
    ConsentConfig, DecisionLogConfig, FilteredEntries, LoggedDecisions, MassLookupAction,
    MassLookupConfig, OperationConfig, PolicyConfig, RelationshipConfig, RelationshipSource,
};
pub use self::server::{
    CitizenConfig, LimitsConfig, LogConfig, LogFormat, PagingConfig, RateLimitConfig, RateLimitKey,
    RedisConfig, ServerConfig, TlsConfig, TracingConfig,
};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing listener.
    pub server: ServerConfig,
    /// TLS for the client-facing listener.
    pub tls: TlsConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Trusted token issuers.
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
    /// Per-path requirements.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The backend FHIR server.
    pub backend: BackendConfig,
    /// More backends, by path prefix and/or resource type.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// The `/.well-known/smart-configuration` document.
    #[serde(default)]
    pub smart: SmartConfig,
    /// Policy enforcement choices.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `POST /token`: SOSI ID cards and OIOSAML assertions exchanged for Portvagt tokens.
    #[serde(default)]
    pub token_exchange: Option<TokenExchangeConfig>,
    /// `[redis]`: TLS and credentials for every `redis_url`.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// The audit trail (IHE BALP AuditEvents in a durable spool).
    #[serde(default)]
    pub audit: Option<AuditConfig>,
    /// Citizens' blocks (negative consent) and break-the-glass.
    #[serde(default)]
    pub consent: Option<ConsentConfig>,
    /// The treatment relationship a professional needs to read a patient's data.
    #[serde(default)]
    pub relationship: Option<RelationshipConfig>,
    /// How many distinct patients one professional may reach in a window.
    #[serde(default)]
    pub mass_lookup: Option<MassLookupConfig>,
    /// Per-client rate limits.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The citizen listener: no client certificate, citizens' own tokens, their access log.
    #[serde(default)]
    pub citizen: Option<CitizenConfig>,
    /// Signed paging links.
    #[serde(default)]
    pub paging: PagingConfig,
    /// Operations declared by the operator, tried before the built-in ones.
    #[serde(default, rename = "operation")]
    pub operations: Vec<OperationConfig>,
    /// Every decision as JSON lines (and the shadow rules' disagreements).
    #[serde(default)]
    pub decision_log: Option<DecisionLogConfig>,
    /// W3C Trace Context and span export.
    #[serde(default)]
    pub tracing: TracingConfig,
}

/// A configuration problem, naming the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `tls.client_ca` or `issuer[0].jwks_file`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Several problems as one text, each as it displays, `separator` between them.
    pub fn join(errors: &[ConfigError], separator: &str) -> String {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(separator)
    }
}

impl Config {
    /// Reads and parses a config file. Relative paths in it are resolved against the file's
    /// folder, so a config can travel with its certificates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("(file)", format!("cannot read {}: {e}", path.display()))
        })?;
        let mut config = Self::parse(&text)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Parses config text. Unknown fields and wrong types are errors that name the field.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let mut message = e.message().to_owned();
            let field = match e.span() {
                Some(span) => {
                    let (line, column) = line_and_column(text, span.start);
                    message.push_str(&format!(" (line {line}, column {column})"));
                    field_at(text, span.start)
                }
                None => "(file)".to_owned(),
            };
            ConfigError::new(field, message)
        })
    }

    /// The issuer the SMART documents describe: `[smart] issuer`, else the first issuer.
    pub fn smart_issuer(&self) -> Option<&str> {
        self.smart
            .issuer
            .as_deref()
            .or_else(|| self.issuers.first().map(|issuer| issuer.issuer.as_str()))
    }

    /// What each replica keeps in its own memory that replicas serving one configuration
    /// should share, when `[server] replicas` says there is more than one: each sentence names
    /// the setting and what happens without it. Empty with one replica.
    pub fn unshared_state(&self) -> Vec<&'static str> {
        if self.server.replicas <= 1 {
            return Vec::new();
        }
        let mut unshared = Vec::new();
        if self
            .token_exchange
            .as_ref()
            .is_some_and(|exchange| exchange.redis_url.is_none())
        {
            unshared.push(
                "[token_exchange] has no redis_url: each replica keeps its own replay cache, so \
                 the same SOSI card or assertion is exchanged once per replica (and again after \
                 a restart)",
            );
        }
        if self
            .rate_limit
            .as_ref()
            .is_some_and(|limit| limit.redis_url.is_none())
        {
            unshared.push(
                "[rate_limit] has no redis_url: each replica counts on its own, so a client \
                 gets `requests` per window from every replica",
            );
        }
        if self
            .mass_lookup
            .as_ref()
            .is_some_and(|guard| guard.redis_url.is_none())
        {
            unshared.push(
                "[mass_lookup] has no redis_url: each replica counts on its own, so a \
                 professional reaches `max_patients` through every replica",
            );
        }
        let citizens_block = self.citizen.as_ref().is_some_and(|citizen| citizen.blocks);
        if citizens_block
            && self
                .consent
                .as_ref()
                .is_some_and(|consent| consent.redis_url.is_none())
        {
            unshared.push(
                "[consent] has no redis_url: a block a citizen makes on one replica holds on \
                 the others only once their cached Consents expire (cache_ttl)",
            );
        }
        if self.paging.key_file.is_none() {
            unshared.push(
                "[paging] has no key_file: a paging link is good only on the replica that made \
                 it",
            );
        }
        unshared
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        };
        resolve(&mut self.tls.cert);
        resolve(&mut self.tls.key);
        resolve(&mut self.tls.client_ca);
        self.tls.crls.iter_mut().for_each(resolve);
        for issuer in &mut self.issuers {
            if let Some(file) = &mut issuer.jwks_file {
                resolve(file);
            }
            if let Some(file) = &mut issuer.ca_file {
                resolve(file);
            }
            if let Some(introspection) = &mut issuer.introspection {
                for file in [
                    &mut introspection.client_secret_file,
                    &mut introspection.client_cert,
                    &mut introspection.client_key,
                ]
                .into_iter()
                .flatten()
                {
                    resolve(file);
                }
            }
        }
        for rules_file in [
            &mut self.policy.rules_file,
            &mut self.policy.shadow_rules_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(rules_file);
        }
        if let Some(log) = &mut self.decision_log {
            resolve(&mut log.path);
        }
        if let Some(ca) = &mut self.tracing.otlp_ca_file {
            resolve(ca);
        }
        if let Some(key_file) = &mut self.paging.key_file {
            resolve(key_file);
        }
        let service = self
            .relationship
            .as_mut()
            .and_then(|relationship| relationship.service.as_mut());
        for backend in std::iter::once(&mut self.backend)
            .chain(
                self.upstreams
                    .iter_mut()
                    .map(|upstream| &mut upstream.backend),
            )
            .chain(service)
        {
            for file in [
                &mut backend.ca_file,
                &mut backend.client_cert,
                &mut backend.client_key,
            ]
            .into_iter()
            .flatten()
            {
                resolve(file);
            }
            if let Some(identity) = &mut backend.identity {
                resolve(&mut identity.signing_key);
            }
        }
        if let Some(audit) = &mut self.audit {
            resolve(&mut audit.spool_dir);
            for file in [&mut audit.seal_key, &mut audit.seal_jwks]
                .into_iter()
                .flatten()
            {
                resolve(file);
            }
            if let Some(ship) = &mut audit.ship {
                for file in [
                    &mut ship.ca_file,
                    &mut ship.client_cert,
                    &mut ship.client_key,
                ]
                .into_iter()
                .flatten()
                {
                    resolve(file);
                }
            }
        }
        if let Some(redis) = &mut self.redis {
            for file in [
                &mut redis.ca_file,
                &mut redis.client_cert,
                &mut redis.client_key,
                &mut redis.password_file,
            ]
            .into_iter()
            .flatten()
            {
                resolve(file);
            }
        }
        if let Some(exchange) = &mut self.token_exchange {
            resolve(&mut exchange.signing_key);
            exchange
                .trusted_sts
                .iter_mut()
                .for_each(|sts| resolve(sts.path_mut()));
        }
    }
}

/// Names the TOML key in effect at byte `offset`: the nearest `[table]` header above plus the
/// key on the offending line, e.g. `limits.max_body_bytes`.
/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn field_at(text: &str, offset: usize) -> String {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    // The error is in a table header itself (`[tlss]`, `[tls`): that table, not the one before.
    if line.starts_with('[') {
        return line
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned();
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.starts_with('['));
    match (table, key) {
        (Some(table), Some(key)) => format!("{table}.{key}"),
        (Some(table), None) => table,
        (None, Some(key)) => key,
        (None, None) => "(file)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_syntax_error_names_its_table_and_line() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[tls\ncert = \"a\"\n";
        let error = Config::parse(text).unwrap_err();
        assert_eq!(error.field, "tls", "{error}");
        assert!(error.message.contains("line 4"), "{error}");
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n[tlss]\ncert = \"a\"\n";
        let error = Config::parse(text).unwrap_err();
        assert!(
            error.field == "tlss" || error.to_string().contains("tlss"),
            "{error}"
        );
        assert!(error.message.contains("line 3"), "{error}");
        let text = "[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n";
        let error = Config::parse(text).unwrap_err();
        assert_eq!(error.field, "server.lisen", "{error}");
        assert!(error.message.contains("line 3, column 1"), "{error}");
        assert_eq!(line_and_column("ab\nøc", 5), (2, 2));
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:0"

[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[[issuer]]
issuer = "https://auth.example.dk"
audiences = ["https://fhir.example.dk/fhir"]
jwks_file = "jwks.json"

[backend]
url = "http://127.0.0.1:8080/fhir/R4"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.limits.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(
            config.issuers[0].algorithms,
            ["RS256", "PS256", "ES256", "EdDSA"]
        );
        assert_eq!(config.issuers[0].leeway, Duration::from_secs(30));
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn what_replicas_do_not_share_is_named_only_when_there_are_several() {
        let exchange = "\n[token_exchange]\nissuer = \"https://portvagt.example.dk\"\n\
                        signing_key = \"k.pem\"\nkey_id = \"k\"\ntrusted_sts = []\n";
        let counters = "\n[rate_limit]\nrequests = 10\n\n[mass_lookup]\nmax_patients = 5\n";
        let blocks = "\n[consent]\ncache_ttl = \"30s\"\n\n[citizen]\nlisten = \"127.0.0.1:8444\"\n\
                      blocks = true\n";
        let everything = format!("{MINIMAL}{exchange}{counters}{blocks}");
        assert!(
            Config::parse(&everything)
                .unwrap()
                .unshared_state()
                .is_empty()
        );
        let several = everything.replace("[server]\n", "[server]\nreplicas = 3\n");
        let unshared = Config::parse(&several).unwrap().unshared_state();
        let named: Vec<&str> = unshared
            .iter()
            .map(|note| note.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            named,
            [
                "[token_exchange]",
                "[rate_limit]",
                "[mass_lookup]",
                "[consent]",
                "[paging]"
            ]
        );
        let shared = several
            .replace(
                "trusted_sts = []\n",
                "trusted_sts = []\nredis_url = \"redis://r\"\n",
            )
            .replace(
                "requests = 10\n",
                "requests = 10\nredis_url = \"redis://r\"\n",
            )
            .replace(
                "max_patients = 5\n",
                "max_patients = 5\nredis_url = \"redis://r\"\n",
            )
            .replace(
                "cache_ttl = \"30s\"\n",
                "cache_ttl = \"30s\"\nredis_url = \"redis://r\"\n",
            )
            + "\n[paging]\nkey_file = \"paging.key\"\n";
        assert!(Config::parse(&shared).unwrap().unshared_state().is_empty());
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("[backend]\n", "[backend]\nurll = \"x\"\n");
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field, "backend.urll");
        assert!(error.message.contains("unknown field"), "{error}");
    }

    #[test]
    fn wrong_type_is_named() {
        let text = format!("{MINIMAL}\n[limits]\nmax_body_bytes = \"ten\"\n");
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field, "limits.max_body_bytes", "{error}");
    }

    #[test]
    fn bad_duration_is_named() {
        let text = format!("{MINIMAL}\n[limits]\nrequest_timeout = \"soon\"\n");
        let error = Config::parse(&text).unwrap_err();
        assert_eq!(error.field, "limits.request_timeout", "{error}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portvagt.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.tls.cert, dir.path().join("server.crt"));
        assert_eq!(
            config.issuers[0].jwks_file,
            Some(dir.path().join("jwks.json"))
        );
    }
}
