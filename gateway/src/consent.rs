//! Negative consent enforcement: citizens' Consents (FHIR `Consent` resources in the backend)
//! are loaded per patient, cached briefly, and applied to every interaction: before the
//! request (the patients its [`Reach`](portvagt_policy::Reach) names, and what a write would
//! change, read first) and after (the patients in the answer: a read is refused, search and
//! history entries are withheld without a trace, batch entries are answered 403 one by one).
//! The caller is matched by every identity the backend knows for them ([`ConsentStore::identify`]),
//! so a professional arriving by SAML exchange with only an authorisation id and one with a
//! `fhirUser` are the same person. Break-the-glass ([`Emergency`]) lifts a block, never a scope
//! or a rule; it is counted and audited with its reason. The rules are in
//! [`portvagt_policy::consent`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portvagt_policy::compartment::patient_reference_id;
use portvagt_policy::consent::{
    AUTHORIZATION_SYSTEM, Block, CPR_SYSTEM, CVR_SYSTEM, CallerIds, PatientBlocks, SOR_SYSTEM,
    blocks_in,
};
use portvagt_policy::filter::{bundle_resources, has_next_page};
use serde_json::Value;

use crate::auth::Principal;
use crate::backend::{Backend, Fetched};
use crate::config::ConsentConfig;
use crate::metrics::Metrics;
use crate::redis::{Pushed, RedisClient, RedisSettings};

/// How many Practitioners, roles and organisations one caller's identities may take to read.
const MAX_IDENTITY_READS: usize = 32;

/// How many patients' Consents are asked for in one search.
const CHUNK: usize = 40;

/// The header that carries the reason for a break-the-glass access.
pub const BREAK_GLASS_HEADER: &str = "x-portvagt-break-glass-reason";

/// What a blocked caller gets for a resource they did not ask for by its patient: the answer
/// for a resource that does not exist (404), the gateway's own, whatever the backend's looks
/// like, so that existence tells nothing either.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the resource was not found")]
pub struct NotFoundError;

/// Consents could not be loaded: the access is refused (503), never let through unchecked.
#[derive(Debug, thiserror::Error)]
#[error("the patients' consents could not be checked")]
pub struct ConsentUnavailableError;

/// The blocks of each patient, loaded from the backend and cached.
#[derive(Debug)]
pub struct ConsentStore {
    metrics: Arc<Metrics>,
    ttl: Duration,
    capacity: usize,
    /// By (backend, patient): each backend holds its own patients' Consents.
    cache: Mutex<HashMap<(String, String), Cached>>,
    identities: Mutex<HashMap<IdentityKey, (Instant, Arc<CallerIds>)>>,
    /// Counts [`ConsentStore::forget`]s: a load that began before one does not cache the
    /// patients forgotten since, so that a block lifted or made while it was under way cannot
    /// come back from it.
    epoch: AtomicU64,
    /// The latest forgets (epoch, patient; `None`: everyone), changed under the cache's lock.
    forgotten: Mutex<std::collections::VecDeque<(u64, Option<PatientDigest>)>>,
    /// Where replicas announce blocks made on them (`[consent] redis_url`).
    bus: Option<RedisClient>,
    /// With a bus: whether this replica is subscribed. Until it is (and whenever it is not),
    /// nothing cached is used: a block announced meanwhile would be missed.
    listening: AtomicBool,
}

/// The channel blocks are announced on; the message is the patient's id.
const BUS_CHANNEL: &str = "portvagt:consent:changed";
/// How long a subscription may be silent before it is asked for a pong, and then how long the
/// pong may take before the connection counts as lost.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// The backend asked, then the caller's identities as the token and certificate gave them,
/// sorted: the identity cache's key.
type IdentityKey = Vec<(String, String)>;

/// One patient's blocks, until when they may be used, and her digest (what the other replicas
/// are told when her blocks change).
type Cached = (Instant, Arc<Vec<Block>>, PatientDigest);

/// A patient's id as the replicas name it to each other over Redis: SHA-256 of it, so that
/// the channel does not carry the id itself. It is not keyed: whoever can read the channel and
/// guess ids can confirm a guess.
type PatientDigest = [u8; 32];

fn patient_digest(patient: &str) -> PatientDigest {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("portvagt-consent:{patient}").as_bytes(),
    );
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `digest` as 64 lower-case hex digits, and back (anything else is no digest).
fn digest_hex(digest: &PatientDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest_from_hex(text: &[u8]) -> Option<PatientDigest> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (slot, pair) in out.iter_mut().zip(text.chunks(2)) {
        *slot = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

impl ConsentStore {
    /// A store reading Consents from the backends it is handed (the one the routes send
    /// `Consent` to for each request).
    pub fn new(
        config: &ConsentConfig,
        metrics: Arc<Metrics>,
        redis: &RedisSettings,
    ) -> Result<ConsentStore, crate::config::ConfigError> {
        let bus = config
            .redis_url
            .as_deref()
            .map(|url| RedisClient::from_url(url, Duration::from_millis(500), redis))
            .transpose()
            .map_err(|e| crate::config::ConfigError::new("consent.redis_url", e))?;
        Ok(ConsentStore {
            metrics,
            ttl: config.cache_ttl,
            capacity: config.cache_entries.max(1),
            cache: Mutex::new(HashMap::new()),
            identities: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            forgotten: Mutex::default(),
            bus,
            listening: AtomicBool::new(false),
        })
    }

    /// Forgets what is cached of `patient`'s Consents (in every backend): the next access
    /// loads them again.
    pub fn forget(&self, patient: &str) {
        self.forget_digest(patient_digest(patient));
    }

    /// Forgets the patient whose digest is `digest` (as another replica announced her).
    fn forget_digest(&self, digest: PatientDigest) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.note_forgotten(Some(digest));
        cache.retain(|_, (_, _, cached)| *cached != digest);
    }

    /// Forgets every cached Consent.
    fn forget_all(&self) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.note_forgotten(None);
        cache.clear();
    }

    /// How many forgets are remembered; a load that began before more than these happened
    /// caches nothing.
    const FORGETS_KEPT: usize = 256;

    /// Counts a forget (with the cache's lock held).
    fn note_forgotten(&self, patient: Option<PatientDigest>) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        if forgotten.len() == Self::FORGETS_KEPT {
            forgotten.pop_front();
        }
        forgotten.push_back((epoch, patient));
    }

    /// Whether `patient`'s Consents, loaded by a load that began at `epoch`, may be cached:
    /// nothing forgot them since (with the cache's lock held).
    fn still_current(&self, patient: &str, epoch: u64) -> bool {
        if self.epoch.load(Ordering::SeqCst) == epoch {
            return true;
        }
        let digest = patient_digest(patient);
        let forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        // Forgets since the load began that are no longer remembered: anyone's.
        let remembered = forgotten
            .front()
            .is_some_and(|(first, _)| *first <= epoch + 1);
        remembered
            && !forgotten
                .iter()
                .any(|(at, who)| *at > epoch && who.is_none_or(|who| who == digest))
    }

    /// A block of `patient`'s made or lifted here: forgotten on this replica, and announced to
    /// the others (with `redis_url`). A failed announcement is logged and counted: the block
    /// stands, and the other replicas see it when their cache entry expires (`cache_ttl`).
    pub async fn changed(&self, patient: &str) {
        self.forget(patient);
        let Some(bus) = &self.bus else {
            return;
        };
        let digest = digest_hex(&patient_digest(patient));
        let publish = [
            b"PUBLISH".as_slice(),
            BUS_CHANNEL.as_bytes(),
            digest.as_bytes(),
        ];
        let mut announced = bus.command(&publish).await;
        // Blocks are made seldom: the pooled connection may have been closed by Redis (or a
        // proxy before it) while idle. Once more, on a new one (hearing it twice does no harm).
        if matches!(
            announced,
            Err(crate::redis::RedisError::Io(_) | crate::redis::RedisError::Protocol)
        ) {
            announced = bus.command(&publish).await;
        }
        if let Err(error) = announced {
            self.metrics.consent_bus_failures.inc();
            tracing::error!(%error, "a citizen's block could not be announced to the other replicas");
        }
    }

    /// Whether cached Consents may be used: always without a bus; with one, only while this
    /// replica is subscribed.
    fn cache_usable(&self) -> bool {
        self.bus.is_none() || self.listening.load(Ordering::SeqCst)
    }

    /// With a bus: subscribes in the background, for as long as the process runs, and forgets
    /// the patients announced. Every new subscription forgets everything first (what was
    /// announced while none stood is not known).
    pub fn start_listening(self: &Arc<Self>) {
        let Some(bus) = self.bus.clone() else {
            return;
        };
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut logged = false;
            loop {
                let Some(this) = store.upgrade() else {
                    return;
                };
                match bus.subscribe(BUS_CHANNEL).await {
                    Ok(subscription) => {
                        this.forget_all();
                        this.listening.store(true, Ordering::SeqCst);
                        this.metrics.consent_bus_subscribed.set(1);
                        tracing::info!("subscribed to citizens' block announcements");
                        logged = false;
                        let error = this.listen(subscription).await;
                        this.listening.store(false, Ordering::SeqCst);
                        this.metrics.consent_bus_subscribed.set(0);
                        tracing::warn!(%error, "lost the subscription to citizens' block announcements: Consents are read for every access until it is back");
                    }
                    Err(error) if !logged => {
                        logged = true;
                        tracing::warn!(%error, "cannot subscribe to citizens' block announcements: Consents are read for every access until it can");
                    }
                    Err(_) => {}
                }
                drop(this);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Forgets each patient announced, until the subscription fails (or stays silent through
    /// a heartbeat).
    async fn listen(
        &self,
        mut subscription: crate::redis::Subscription,
    ) -> crate::redis::RedisError {
        let mut asked = false;
        loop {
            match tokio::time::timeout(HEARTBEAT, subscription.next()).await {
                Ok(Ok(Pushed::Message(payload))) => match digest_from_hex(&payload) {
                    Some(digest) => self.forget_digest(digest),
                    // Not what a replica sends: whom it is about is unknown.
                    None => self.forget_all(),
                },
                Ok(Ok(Pushed::Pong)) => asked = false,
                Ok(Err(error)) => return error,
                Err(_) if asked => return crate::redis::RedisError::Timeout,
                Err(_) => {
                    if let Err(error) = subscription.ping().await {
                        return error;
                    }
                    asked = true;
                }
            }
        }
    }

    /// The blocks of each of `patients` (ids) in `backend`, from the cache or, for the rest,
    /// one search.
    pub async fn blocks(
        &self,
        backend: &Backend,
        patients: &[String],
    ) -> Result<PatientBlocks, ConsentUnavailableError> {
        let name = backend.name();
        let now = Instant::now();
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let usable = self.cache_usable();
            for patient in patients {
                match cache.get(&(name.to_owned(), patient.clone())) {
                    Some((expires, blocks, _)) if usable && *expires > now => {
                        found.insert(patient.clone(), blocks.clone());
                    }
                    _ => missing.push(patient.clone()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let mut loaded: HashMap<String, Vec<Block>> =
            missing.iter().map(|p| (p.clone(), Vec::new())).collect();
        // A few patients per search keep the URL short and each answer on one page.
        for chunk in missing.chunks(CHUNK) {
            let consents = self.active_consents(backend, chunk).await?;
            for consent in &consents {
                let Some(block) = blocks_in(consent) else {
                    continue;
                };
                let owner = consent
                    .pointer("/patient/reference")
                    .and_then(Value::as_str)
                    .and_then(patient_reference_id)
                    .filter(|id| chunk.iter().any(|p| p == id));
                match owner {
                    Some(patient) => loaded.entry(patient.to_owned()).or_default().push(block),
                    // Found for one of these patients but not placeable: it holds for each.
                    None => {
                        for patient in chunk {
                            loaded
                                .entry(patient.clone())
                                .or_default()
                                .push(block.clone());
                        }
                    }
                }
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !self.cache_usable() {
            for (patient, blocks) in loaded {
                found.insert(patient, Arc::new(blocks));
            }
            return Ok(found);
        }
        if cache.len() + loaded.len() > self.capacity {
            cache.retain(|_, (expires, _, _)| *expires > now);
            if cache.len() + loaded.len() > self.capacity {
                cache.clear();
            }
        }
        for (patient, blocks) in loaded {
            let blocks = Arc::new(blocks);
            // A block of hers changed while these were loaded: used for this access, not kept.
            if self.still_current(&patient, epoch) {
                let digest = patient_digest(&patient);
                cache.insert(
                    (name.to_owned(), patient.clone()),
                    (now + self.ttl, blocks.clone(), digest),
                );
            }
            found.insert(patient, blocks);
        }
        Ok(found)
    }
}

impl ConsentStore {
    /// Every identity the backend knows for the caller, so that a Consent naming them one way
    /// blocks them arriving another: the Practitioners with their authorisation id or CPR and
    /// the Organizations with their SOR or CVR (searched by identifier), the PractitionerRoles
    /// of those Practitioners and their organisations, and the identifiers and links of the
    /// `fhirUser` (a Practitioner's identifiers; a PractitionerRole's practitioner and
    /// organisation, and theirs). Cached like the Consents; asked only when
    /// some patient's Consent names somebody. A backend that cannot answer refuses the access
    /// (503), it never lets it through unchecked.
    pub async fn identify(
        &self,
        backend: &Backend,
        caller: &CallerIds,
    ) -> Result<Arc<CallerIds>, ConsentUnavailableError> {
        let mut key = vec![(backend.name().to_owned(), String::new())];
        key.extend(caller.identifiers.iter().cloned());
        key.extend(caller.references.iter().map(|r| (String::new(), r.clone())));
        key.sort();
        let now = Instant::now();
        if let Some((expires, known)) = self
            .identities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && *expires > now
        {
            return Ok(known.clone());
        }
        let mut known = caller.clone();
        for (system, value) in &caller.identifiers {
            let resource_type = match system.as_str() {
                AUTHORIZATION_SYSTEM | CPR_SYSTEM => "Practitioner",
                SOR_SYSTEM | CVR_SYSTEM => "Organization",
                _ => continue,
            };
            let query = format!(
                "identifier={}&_count=50",
                crate::encoding::form_encode(&format!("{system}|{value}"))
            );
            let bundle = self.search(backend, resource_type, &query).await?;
            for resource in bundle.iter().flat_map(bundle_resources) {
                add_resource(&mut known, resource);
            }
        }
        // The roles of the Practitioners found: a Consent may name the role, or the
        // organisation it is held at.
        let mut practitioners: Vec<String> = known
            .references
            .iter()
            .filter(|r| r.starts_with("Practitioner/"))
            .cloned()
            .collect();
        practitioners.sort();
        practitioners.dedup();
        if practitioners.len() > MAX_IDENTITY_READS {
            return Err(ConsentUnavailableError);
        }
        let mut linked = Vec::new();
        for practitioner in practitioners {
            let query = format!(
                "practitioner={}&_count=50",
                crate::encoding::form_encode(&practitioner)
            );
            let bundle = self.search(backend, "PractitionerRole", &query).await?;
            for role in bundle.iter().flat_map(bundle_resources) {
                if let Some(organisation) = role
                    .pointer("/organization/reference")
                    .and_then(Value::as_str)
                {
                    linked.push(organisation.to_owned());
                }
                add_resource(&mut known, role);
            }
        }
        // The fhirUser and what it links to, two steps deep (role → practitioner, organisation).
        let mut pending: Vec<String> = caller.references.clone();
        pending.extend(linked);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            let mut next = Vec::new();
            for reference in pending {
                let relative = portvagt_policy::consent::relative(&reference).to_owned();
                let linkable = ["Practitioner/", "PractitionerRole/", "Organization/"]
                    .iter()
                    .any(|t| relative.starts_with(t));
                if !linkable || relative.contains(['?', '#']) || !seen.insert(relative.clone()) {
                    continue;
                }
                // A caller linked to more than this is not followed halfway: refused.
                if seen.len() > MAX_IDENTITY_READS {
                    return Err(ConsentUnavailableError);
                }
                let Some(resource) = self.fetch(backend, &relative, None).await? else {
                    continue;
                };
                for link in ["/practitioner/reference", "/organization/reference"] {
                    if let Some(linked) = resource.pointer(link).and_then(Value::as_str) {
                        next.push(linked.to_owned());
                    }
                }
                add_resource(&mut known, &resource);
            }
            pending = next;
        }
        known.identifiers.sort();
        known.identifiers.dedup();
        known.references.sort();
        known.references.dedup();
        let known = Arc::new(known);
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        if identities.len() >= self.capacity {
            identities.clear();
        }
        identities.insert(key, (now + self.ttl, known.clone()));
        Ok(known)
    }

    /// The active Consents of `patients` (ids), in one search through the backend's circuit
    /// breaker and limits; an answer on more than one page, or none, is refused (a block on a
    /// page not read would be a block not enforced).
    async fn active_consents(
        &self,
        backend: &Backend,
        patients: &[String],
    ) -> Result<Vec<Value>, ConsentUnavailableError> {
        let references: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
        let query = format!(
            "patient={}&status=active&_count=1000",
            crate::encoding::form_encode(&references.join(","))
        );
        let bundle = self
            .fetch_limited(backend, "Consent", Some(&query), 8 * 1024 * 1024)
            .await?
            .filter(|b| b.get("resourceType").and_then(Value::as_str) == Some("Bundle"))
            .ok_or(ConsentUnavailableError)?;
        let more_pages = has_next_page(&bundle);
        if more_pages {
            return Err(ConsentUnavailableError);
        }
        Ok(bundle_resources(&bundle).cloned().collect())
    }

    /// A search for the caller's identities: on one page, or refused (an identity on a page not
    /// read would be a block not enforced).
    async fn search(
        &self,
        backend: &Backend,
        resource_type: &str,
        query: &str,
    ) -> Result<Option<Value>, ConsentUnavailableError> {
        let bundle = self.fetch(backend, resource_type, Some(query)).await?;
        let more = bundle.as_ref().is_some_and(has_next_page);
        if more {
            return Err(ConsentUnavailableError);
        }
        Ok(bundle)
    }

    async fn fetch(
        &self,
        backend: &Backend,
        relative: &str,
        query: Option<&str>,
    ) -> Result<Option<Value>, ConsentUnavailableError> {
        self.fetch_limited(backend, relative, query, 1024 * 1024)
            .await
    }

    async fn fetch_limited(
        &self,
        backend: &Backend,
        relative: &str,
        query: Option<&str>,
        limit: usize,
    ) -> Result<Option<Value>, ConsentUnavailableError> {
        match backend
            .fetch_json(relative, query, limit, &self.metrics)
            .await
        {
            Ok(Fetched::Found(value)) => Ok(Some(value)),
            Ok(Fetched::Missing) => Ok(None),
            Err(_) => Err(ConsentUnavailableError),
        }
    }
}

/// Adds a Practitioner, PractitionerRole or Organization: its reference and its identifiers.
fn add_resource(known: &mut CallerIds, resource: &Value) {
    let (Some(resource_type), Some(id)) = (
        resource.get("resourceType").and_then(Value::as_str),
        resource.get("id").and_then(Value::as_str),
    ) else {
        return;
    };
    known.references.push(format!("{resource_type}/{id}"));
    for identifier in resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(system), Some(value)) = (
            identifier.get("system").and_then(Value::as_str),
            identifier.get("value").and_then(Value::as_str),
        ) {
            known
                .identifiers
                .push((system.to_owned(), value.to_owned()));
        }
    }
}

/// The caller as consent actors see them: [`person_ids`] and the client certificate's
/// organisation (CVR): a block of the organisation holds however its people arrive.
pub fn caller_ids(principal: &Principal) -> CallerIds {
    let mut ids = person_ids(principal);
    if let Some(cvr) = principal.peer().cvr() {
        ids.identifiers.push((CVR_SYSTEM.into(), cvr.to_owned()));
    }
    ids
}

/// The person the token names: authorisation id, CPR, the organisation the token says she acts
/// for (SOR/CVR) and `fhirUser`.
pub fn person_ids(principal: &Principal) -> CallerIds {
    let identity = principal.identity();
    let mut ids = CallerIds::default();
    if let Some(authorization) = &identity.authorization_id {
        ids.identifiers
            .push((AUTHORIZATION_SYSTEM.into(), authorization.clone()));
    }
    if let Some(cpr) = &identity.cpr {
        ids.identifiers.push((CPR_SYSTEM.into(), cpr.clone()));
    }
    if let Some(organisation) = &identity.organisation {
        ids.identifiers
            .push((organisation.system(), organisation.id.clone()));
    }
    if let Some(fhir_user) = principal.fhir_user() {
        ids.references.push(fhir_user.to_owned());
    }
    ids
}

/// The OperationOutcome a batch entry withheld by a Consent is answered with.
pub fn consent_refusal() -> Value {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": "forbidden",
            "details": { "coding": [{ "system": crate::outcome::DETAIL_SYSTEM, "code": "consent-block" }] },
            "diagnostics": "the patient has blocked this access"
        }]
    })
}

pub use crate::outcome::not_found;

/// [`not_found`] as an OperationOutcome (a withheld batch entry that did not name its
/// patient).
pub fn not_found_outcome() -> Value {
    not_found().to_json(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ConsentStore {
        let config = ConsentConfig {
            cache_ttl: Duration::from_secs(300),
            cache_entries: 100,
            redis_url: None,
        };
        ConsentStore::new(&config, Arc::new(Metrics::new()), &RedisSettings::default()).unwrap()
    }

    /// A load under way when a patient's blocks change does not cache hers (they may be the
    /// old ones), but still caches everyone else's; one under way through more changes than
    /// are remembered caches nobody's.
    #[test]
    fn a_load_caches_only_patients_not_forgotten_while_it_ran() {
        let store = store();
        let began = store.epoch.load(Ordering::SeqCst);
        assert!(store.still_current("pat-anne", began));
        store.forget("pat-anne");
        assert!(!store.still_current("pat-anne", began));
        assert!(store.still_current("pat-bo", began));
        let later = store.epoch.load(Ordering::SeqCst);
        assert!(store.still_current("pat-anne", later));
        store.forget_all();
        assert!(!store.still_current("pat-bo", later));
        let again = store.epoch.load(Ordering::SeqCst);
        for n in 0..ConsentStore::FORGETS_KEPT + 1 {
            store.forget(&format!("pat-{n}"));
        }
        assert!(!store.still_current("pat-bo", again));
    }

    /// Replicas name a patient to each other by a digest only, and a message that is not one
    /// forgets everyone.
    #[test]
    fn patients_are_announced_by_digest() {
        let digest = patient_digest("pat-anne");
        let hex = digest_hex(&digest);
        assert_eq!(hex.len(), 64);
        assert_eq!(digest_from_hex(hex.as_bytes()), Some(digest));
        assert_ne!(patient_digest("pat-bo"), digest);
        for odd in [
            &b"pat-anne"[..],
            &hex.as_bytes()[..63],
            &[b'g'; 64][..],
            "ø".repeat(32).as_bytes(),
        ] {
            assert_eq!(digest_from_hex(odd), None);
        }
    }
}
