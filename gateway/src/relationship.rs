//! The treatment relationship a professional needs to read a patient's data (`[relationship]`,
//! README "Treatment relationship"): found in the backend's own resources or asked of a
//! relation service, cached per (professional, patient), and refused (503) when it cannot be
//! found out. What counts is decided in [`portvagt_policy::relationship`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portvagt_policy::consent::{AUTHORIZATION_SYSTEM, CPR_SYSTEM, CallerIds};
use portvagt_policy::filter::bundle_resources;
use portvagt_policy::relationship::{
    EVIDENCE_TYPES, ServiceAnswer, Window, evidence, patient_parameter, service_answer,
};
use serde_json::Value;

use crate::auth::Principal;
use crate::backend::{Backend, Fetched};
use crate::config::{ConfigError, RelationshipConfig, RelationshipSource};
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
    Fhir { window: Window },
    /// A relation service.
    Http(Arc<Backend>),
}

/// A professional's identities, resolved, and until when they are used.
type Known = (Instant, Arc<CallerIds>);

/// The answers cached, by backend, professional (her [`Professional::key`]) and patient, and
/// how many there are.
#[derive(Debug, Default)]
struct Cache {
    entries: usize,
    by: HashMap<String, HashMap<String, HashMap<String, Cached>>>,
}

impl Cache {
    fn forget_expired(&mut self, now: Instant) {
        let mut entries = 0;
        for professionals in self.by.values_mut() {
            for known in professionals.values_mut() {
                known.retain(|_, (until, _)| *until > now);
                entries += known.len();
            }
            professionals.retain(|_, known| !known.is_empty());
        }
        self.entries = entries;
    }

    /// Forgets at least `over` answers, a professional's at a time.
    fn forget_some(&mut self, mut over: usize) {
        for professionals in self.by.values_mut() {
            while over > 0 {
                let Some(key) = professionals.keys().next().cloned() else {
                    break;
                };
                let forgotten = professionals.remove(&key).map_or(0, |known| known.len());
                over = over.saturating_sub(forgotten);
                self.entries = self.entries.saturating_sub(forgotten);
            }
        }
    }
}

/// A professional as the relationship check knows her: her identities, and the cache key made
/// of them once per request.
#[derive(Debug, Clone)]
pub struct Professional {
    ids: CallerIds,
    key: String,
}

impl Professional {
    /// The professional with these identities.
    pub fn new(ids: CallerIds) -> Professional {
        let key = caller_key(&ids);
        Professional { ids, key }
    }
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
    /// By backend, professional, patient.
    cache: Mutex<Cache>,
    /// The professional as the backend knows her, by (backend, professional).
    professionals: Mutex<HashMap<(String, String), Known>>,
    metrics: Arc<Metrics>,
}

impl Relationships {
    /// Reads the relation service's CA and client certificate again (nothing to do for the
    /// `fhir` source).
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.source {
            Source::Http(service) => service.reload_tls(),
            Source::Fhir { .. } => Ok(()),
        }
    }

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
            cache: Mutex::new(Cache::default()),
            professionals: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Whether the check binds `principal`: a person in a bound role, unless the token is the
    /// citizen's own.
    pub fn binds(&self, principal: &Principal) -> bool {
        portvagt_policy::relationship::binds(
            principal.roles(),
            &self.roles,
            principal.own_patient().is_some(),
        )
    }

    /// The evidence of a relationship between `professional` and each of `patients` (ids, in
    /// `backend`): `Type/id` of a resource, or the relation service's basis; `None` where
    /// there is none.
    pub async fn evidence(
        &self,
        backend: &Backend,
        professional: &Professional,
        patients: &[String],
    ) -> Result<HashMap<String, Option<Arc<str>>>, RelationshipUnavailableError> {
        let (mut found, missing) = self.cached(backend.name(), professional, patients);
        if missing.is_empty() {
            return Ok(found);
        }
        let caller = &professional.ids;
        let loaded = match &self.source {
            Source::Fhir { window } => {
                let caller = self.resolve(backend, professional).await?;
                self.search_backend(backend, &caller, &missing, *window)
                    .await?
            }
            Source::Http(service) => self.ask_service(service, backend, caller, &missing).await?,
        };
        self.remember(backend.name(), professional, &loaded);
        found.extend(loaded);
        Ok(found)
    }

    /// What the cache knows of `professional` and `patients` in the backend named `backend`:
    /// the evidence per patient found there, and the patients it must ask about (sorted).
    /// Looked up by reference: nothing is allocated for a patient found.
    pub fn cached(
        &self,
        backend: &str,
        professional: &Professional,
        patients: &[String],
    ) -> (HashMap<String, Option<Arc<str>>>, Vec<String>) {
        let now = Instant::now();
        let mut found = HashMap::with_capacity(patients.len());
        let mut missing = Vec::new();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let known = cache
            .by
            .get(backend)
            .and_then(|professionals| professionals.get(professional.key.as_str()));
        for patient in patients {
            match known.and_then(|known| known.get(patient.as_str())) {
                Some((until, evidence)) if *until > now => {
                    found.insert(patient.clone(), evidence.clone());
                }
                _ => missing.push(patient.clone()),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        (found, missing)
    }

    /// Caches what was found out about `professional` and each patient: a relationship for
    /// `cache_ttl`, none for `negative_cache_ttl`.
    pub fn remember(
        &self,
        backend: &str,
        professional: &Professional,
        loaded: &[(String, Option<Arc<str>>)],
    ) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.entries + loaded.len() > self.capacity {
            cache.forget_expired(now);
            // Still full: room is made for these, not by forgetting everyone's.
            let over = (cache.entries + loaded.len()).saturating_sub(self.capacity);
            cache.forget_some(over);
        }
        let Cache { entries, by } = &mut *cache;
        let known = by
            .entry(backend.to_owned())
            .or_default()
            .entry(professional.key.clone())
            .or_default();
        for (patient, evidence) in loaded {
            let ttl = if evidence.is_some() {
                self.ttl
            } else {
                self.negative_ttl
            };
            if known
                .insert(patient.clone(), (now + ttl, evidence.clone()))
                .is_none()
            {
                *entries += 1;
            }
        }
    }

    /// The backend's own evidence: one search per evidence type for a few patients at a time
    /// (the first page, newest first: what is on a page not read counts as not found).
    async fn search_backend(
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
    async fn ask_service(
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

impl Relationships {
    /// The professional as evidence may name her: her Practitioners (by authorisation id or
    /// CPR, and her `fhirUser`), her PractitionerRoles that are active now, and the
    /// organisation she acts for (the token's, by SOR or CVR; or, acting in a
    /// PractitionerRole as `fhirUser`, its organisation). Not every organisation she ever had
    /// a role at, nor the client certificate's owner: a relationship grants access, so only
    /// who she is now counts. Cached like the answers; read on one page each.
    async fn resolve(
        &self,
        backend: &Backend,
        professional: &Professional,
    ) -> Result<Arc<CallerIds>, RelationshipUnavailableError> {
        let caller = &professional.ids;
        let key = (backend.name().to_owned(), professional.key.clone());
        let now = Instant::now();
        if let Some((until, known)) = self
            .professionals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *until > now
        {
            return Ok(known.clone());
        }
        let today = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut known = caller.clone();
        let mut practitioners: Vec<String> = caller
            .references
            .iter()
            .filter(|r| portvagt_policy::consent::relative(r).starts_with("Practitioner/"))
            .map(|r| portvagt_policy::consent::relative(r).to_owned())
            .collect();
        for (system, value) in &caller.identifiers {
            let resource_type = if is_organisation(system) {
                "Organization"
            } else if [AUTHORIZATION_SYSTEM, CPR_SYSTEM].contains(&system.as_str()) {
                "Practitioner"
            } else {
                continue;
            };
            let query = format!(
                "identifier={}&_count=50",
                crate::encoding::form_encode(&format!(
                    "{}|{}",
                    escape_search(system),
                    escape_search(value)
                ))
            );
            for found in self.search(backend, resource_type, &query).await? {
                if let Some(id) = found.get("id").and_then(Value::as_str) {
                    let reference = format!("{resource_type}/{id}");
                    if resource_type == "Practitioner" {
                        practitioners.push(reference.clone());
                    }
                    known.references.push(reference);
                }
            }
        }
        practitioners.sort_unstable();
        practitioners.dedup();
        if practitioners.len() > 8 {
            return Err(RelationshipUnavailableError);
        }
        for practitioner in &practitioners {
            let query = format!(
                "practitioner={}&_count=100",
                crate::encoding::form_encode(practitioner)
            );
            for role in self.search(backend, "PractitionerRole", &query).await? {
                if let (true, Some(id)) = (
                    role_in_force(&role, today),
                    role.get("id").and_then(Value::as_str),
                ) {
                    known.references.push(format!("PractitionerRole/{id}"));
                }
            }
        }
        // Acting in a role: its organisation is the one she acts for.
        for reference in &caller.references {
            let relative = portvagt_policy::consent::relative(reference);
            if !relative.starts_with("PractitionerRole/") || relative.contains(['?', '#']) {
                continue;
            }
            let role = match backend
                .fetch_json(relative, None, 1024 * 1024, &self.metrics)
                .await
            {
                Ok(Fetched::Found(role)) => role,
                Ok(Fetched::Missing) => continue,
                Err(_) => return Err(RelationshipUnavailableError),
            };
            if role_in_force(&role, today) {
                for link in ["/practitioner/reference", "/organization/reference"] {
                    if let Some(linked) = role.pointer(link).and_then(Value::as_str) {
                        known.references.push(linked.to_owned());
                    }
                }
            } else {
                // A role she no longer holds is not who she is now, `fhirUser` or not.
                known
                    .references
                    .retain(|r| portvagt_policy::consent::relative(r) != relative);
            }
        }
        known.references.sort();
        known.references.dedup();
        let known = Arc::new(known);
        let mut professionals = self.professionals.lock().unwrap_or_else(|p| p.into_inner());
        if professionals.len() >= self.capacity {
            professionals.clear();
        }
        professionals.insert(key, (now + self.ttl, known.clone()));
        Ok(known)
    }

    /// The resources of a search's first page; anything but a search Bundle: unavailable.
    async fn search(
        &self,
        backend: &Backend,
        resource_type: &str,
        query: &str,
    ) -> Result<Vec<Value>, RelationshipUnavailableError> {
        match backend
            .fetch_json(resource_type, Some(query), 1024 * 1024, &self.metrics)
            .await
        {
            Ok(Fetched::Found(bundle))
                if bundle.get("resourceType").and_then(Value::as_str) == Some("Bundle") =>
            {
                Ok(bundle_resources(&bundle).cloned().collect())
            }
            _ => Err(RelationshipUnavailableError),
        }
    }
}

/// Whether a PractitionerRole is in force at `now`: not marked inactive, and its period (if
/// readable) covers now.
fn role_in_force(role: &Value, now: i64) -> bool {
    if role.get("active").and_then(Value::as_bool) == Some(false) {
        return false;
    }
    let Some(period) = role.get("period") else {
        return true;
    };
    if !period.is_object() {
        return false;
    }
    let instant = |key: &str| {
        period
            .get(key)
            .and_then(Value::as_str)
            .and_then(|text| {
                let rfc3339 = &time::format_description::well_known::Rfc3339;
                time::OffsetDateTime::parse(text, rfc3339).ok().or_else(|| {
                    time::OffsetDateTime::parse(&format!("{text}T00:00:00Z"), rfc3339).ok()
                })
            })
            .map(time::OffsetDateTime::unix_timestamp)
    };
    let started = period.get("start").is_none() || instant("start").is_some_and(|s| s <= now);
    let open = period.get("end").is_none() || instant("end").is_some_and(|e| e > now);
    started && open
}

/// A value in a FHIR token search, escaped (`\`, `,`, `$`, `|`): an identifier from a token
/// is one value, never a list or another system.
fn escape_search(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '$' | '|') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn is_organisation(system: &str) -> bool {
    [
        portvagt_policy::consent::SOR_SYSTEM,
        portvagt_policy::consent::CVR_SYSTEM,
    ]
    .contains(&system)
}

/// The professional as the cache knows them: every identity, sorted, each part prefixed by its
/// length (no value can end one part and begin the next).
fn caller_key(caller: &CallerIds) -> String {
    let mut parts: Vec<String> = caller
        .identifiers
        .iter()
        .map(|(system, value)| format!("i{}:{system}{}:{value}", system.len(), value.len()))
        .chain(
            caller
                .references
                .iter()
                .map(|reference| format!("r{}:{reference}", reference.len())),
        )
        .collect();
    parts.sort_unstable();
    parts.concat()
}
