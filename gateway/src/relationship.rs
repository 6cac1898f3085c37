//! The treatment relationship a professional needs to read a patient's data (`[relationship]`,
//! README "Treatment relationship"): found in the backend's own resources or asked of a
//! relation service, cached per (professional, patient), and refused (503) when it cannot be
//! found out. What counts is decided in [`portvagt_policy::relationship`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portvagt_policy::consent::{CPR_SYSTEM, CallerIds};
use portvagt_policy::filter::bundle_resources;
use portvagt_policy::relationship::{
    EVIDENCE_TYPES, ServiceAnswer, Window, evidence, patient_parameter, service_answer,
};
use serde_json::Value;

use crate::auth::Principal;
use crate::backend::{Backend, Fetched};
use crate::config::{ConfigError, ConsentConfig, RelationshipConfig, RelationshipSource};
use crate::consent::ConsentStore;
use crate::metrics::Metrics;

/// The relationship could not be found out (the relation service or the backend did not
/// answer, or answered something else): the access is refused (503), never let through.
#[derive(Debug, thiserror::Error)]
#[error("the treatment relationship could not be checked")]
pub struct RelationshipUnavailableError;

/// How many patients' evidence is searched for at once.
const CHUNK: usize = 20;

/// Where relationships are found.
#[derive(Debug)]
enum Source {
    /// The backend's own resources.
    Fhir {
        window: Window,
        /// The caller's other identities (their PractitionerRoles and organisations), found
        /// as the consent check finds them.
        directory: ConsentStore,
    },
    /// A relation service.
    Http(Arc<Backend>),
}

/// One cached answer: until when, and the evidence (`None`: no relationship).
type Cached = (Instant, Option<Arc<str>>);

/// Relationships, found and cached.
#[derive(Debug)]
pub struct Relationships {
    roles: Vec<String>,
    source: Source,
    ttl: Duration,
    negative_ttl: Duration,
    capacity: usize,
    /// By (backend, professional, patient).
    cache: Mutex<HashMap<(String, String, String), Cached>>,
    metrics: Arc<Metrics>,
}

impl Relationships {
    /// From `[relationship]`; the relation service's client is made here.
    pub fn new(
        config: &RelationshipConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Relationships, ConfigError> {
        let seconds = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        let source = match (config.source, &config.service) {
            (RelationshipSource::Fhir, None) => Source::Fhir {
                window: Window {
                    past: seconds(config.window),
                    ahead: seconds(config.ahead),
                },
                directory: ConsentStore::new(
                    &ConsentConfig {
                        cache_ttl: config.cache_ttl,
                        cache_entries: config.cache_entries,
                    },
                    metrics.clone(),
                ),
            },
            (RelationshipSource::Http, Some(service)) => Source::Http(Arc::new(Backend::named(
                service,
                "relationship.service",
                "relationship",
            )?)),
            (RelationshipSource::Fhir, Some(_)) => {
                return Err(ConfigError::new(
                    "relationship.service",
                    "the fhir source reads the backend's own resources: remove the service, or set source = \"http\"",
                ));
            }
            (RelationshipSource::Http, None) => {
                return Err(ConfigError::new(
                    "relationship.service",
                    "the http source needs its relation service ([relationship.service] url = ...)",
                ));
            }
        };
        if config.roles.iter().all(|role| role.trim().is_empty()) {
            return Err(ConfigError::new(
                "relationship.roles",
                "name the roles the check binds (e.g. [\"7170\", \"5166\"])",
            ));
        }
        Ok(Relationships {
            roles: config.roles.clone(),
            source,
            ttl: config.cache_ttl,
            negative_ttl: config.negative_cache_ttl,
            capacity: config.cache_entries.max(1),
            cache: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Whether the check binds `principal`: a person in a bound role, no patient context.
    pub fn binds(&self, principal: &Principal) -> bool {
        portvagt_policy::relationship::binds(
            principal.roles(),
            &self.roles,
            principal.patient().is_some(),
        )
    }

    /// The evidence of a relationship between `caller` and each of `patients` (ids, in
    /// `backend`): `Type/id` of a resource, or the relation service's basis; `None` where
    /// there is none.
    pub async fn evidence(
        &self,
        backend: &Backend,
        caller: &CallerIds,
        patients: &[String],
    ) -> Result<HashMap<String, Option<Arc<str>>>, RelationshipUnavailableError> {
        let who = caller_key(caller);
        let now = Instant::now();
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for patient in patients {
                let key = (backend.name().to_owned(), who.clone(), patient.clone());
                match cache.get(&key) {
                    Some((until, evidence)) if *until > now => {
                        found.insert(patient.clone(), evidence.clone());
                    }
                    _ => missing.push(patient.clone()),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(found);
        }
        let loaded = match &self.source {
            Source::Fhir { window, directory } => {
                let caller = directory
                    .identify(backend, caller)
                    .await
                    .map_err(|_| RelationshipUnavailableError)?;
                self.from_backend(backend, &caller, &missing, *window)
                    .await?
            }
            Source::Http(service) => {
                self.from_service(service, backend, caller, &missing)
                    .await?
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() + loaded.len() > self.capacity {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() + loaded.len() > self.capacity {
                cache.clear();
            }
        }
        for (patient, evidence) in loaded {
            let ttl = if evidence.is_some() {
                self.ttl
            } else {
                self.negative_ttl
            };
            cache.insert(
                (backend.name().to_owned(), who.clone(), patient.clone()),
                (now + ttl, evidence.clone()),
            );
            found.insert(patient, evidence);
        }
        Ok(found)
    }

    /// The backend's own evidence: one search per evidence type for a few patients at a time
    /// (the first page, newest first: what is on a page not read counts as not found).
    async fn from_backend(
        &self,
        backend: &Backend,
        caller: &CallerIds,
        patients: &[String],
        window: Window,
    ) -> Result<Vec<(String, Option<Arc<str>>)>, RelationshipUnavailableError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut found: Vec<(String, Option<Arc<str>>)> =
            patients.iter().map(|p| (p.clone(), None)).collect();
        for chunk in patients.chunks(CHUNK) {
            let references: Vec<String> = chunk.iter().map(|p| format!("Patient/{p}")).collect();
            for resource_type in EVIDENCE_TYPES {
                let Some(parameter) = patient_parameter(resource_type) else {
                    continue;
                };
                let query = format!(
                    "{parameter}={}&_count=1000&_sort=-_lastUpdated",
                    crate::encoding::form_encode(&references.join(","))
                );
                let bundle = match backend
                    .fetch_json(resource_type, Some(&query), 8 * 1024 * 1024, &self.metrics)
                    .await
                {
                    Ok(Fetched::Found(bundle))
                        if bundle.get("resourceType").and_then(Value::as_str) == Some("Bundle") =>
                    {
                        bundle
                    }
                    _ => return Err(RelationshipUnavailableError),
                };
                let resources: Vec<&Value> = bundle_resources(&bundle).collect();
                for (patient, evidence_found) in &mut found {
                    if evidence_found.is_some() || !chunk.contains(patient) {
                        continue;
                    }
                    *evidence_found =
                        evidence(resources.iter().copied(), patient, caller, window, now)
                            .map(Arc::from);
                }
            }
        }
        Ok(found)
    }

    /// The relation service's answer for each patient: `GET {url}/relationship` with the
    /// patient's id (and CPR, read from the backend), the professional's identifiers and
    /// organisation.
    async fn from_service(
        &self,
        service: &Backend,
        backend: &Backend,
        caller: &CallerIds,
        patients: &[String],
    ) -> Result<Vec<(String, Option<Arc<str>>)>, RelationshipUnavailableError> {
        let mut found = Vec::with_capacity(patients.len());
        for patient in patients {
            let mut params: Vec<(String, String)> = vec![("patient".into(), patient.clone())];
            // A national service knows the patient by CPR, not by this backend's id.
            let record = backend
                .fetch_json(
                    &format!("Patient/{patient}"),
                    None,
                    1024 * 1024,
                    &self.metrics,
                )
                .await
                .map_err(|_| RelationshipUnavailableError)?;
            if let Fetched::Found(record) = &record {
                for identifier in record
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if identifier.get("system").and_then(Value::as_str) == Some(CPR_SYSTEM)
                        && let Some(cpr) = identifier.get("value").and_then(Value::as_str)
                    {
                        params.push(("patient_identifier".into(), format!("{CPR_SYSTEM}|{cpr}")));
                    }
                }
            }
            for (system, value) in &caller.identifiers {
                let name = if is_organisation(system) {
                    "organization"
                } else {
                    "professional"
                };
                params.push((name.into(), format!("{system}|{value}")));
            }
            for reference in &caller.references {
                params.push(("fhir_user".into(), reference.clone()));
            }
            let query = params
                .iter()
                .map(|(name, value)| format!("{name}={}", crate::encoding::form_encode(value)))
                .collect::<Vec<_>>()
                .join("&");
            let answer = match service
                .fetch_json("relationship", Some(&query), 64 * 1024, &self.metrics)
                .await
            {
                Ok(Fetched::Found(answer)) => answer,
                _ => return Err(RelationshipUnavailableError),
            };
            let evidence = match service_answer(&answer, patient) {
                Some(ServiceAnswer::Related { basis }) => Some(Arc::from(basis)),
                Some(ServiceAnswer::Unrelated) => None,
                None => {
                    tracing::warn!("the relation service answered something that is no answer");
                    return Err(RelationshipUnavailableError);
                }
            };
            found.push((patient.clone(), evidence));
        }
        Ok(found)
    }
}

fn is_organisation(system: &str) -> bool {
    [
        portvagt_policy::consent::SOR_SYSTEM,
        portvagt_policy::consent::CVR_SYSTEM,
    ]
    .contains(&system)
}

/// The professional as the cache knows them: every identity, sorted.
fn caller_key(caller: &CallerIds) -> String {
    let mut parts: Vec<String> = caller
        .identifiers
        .iter()
        .map(|(system, value)| format!("{system}|{value}"))
        .chain(caller.references.iter().cloned())
        .collect();
    parts.sort_unstable();
    parts.join("\n")
}
