//! What a request touches, and negative consent at the proxy: before the request is sent, the
//! patients its [`Reach`] names (identifiers resolved, owners of what a write changes read
//! first, through the routed backend) are checked and handed to the audit record; after, the
//! answer's resources are checked one by one. The rules are in [`portvagt_policy::consent`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portvagt_policy::compartment::{Identified, identifiers_written};
use portvagt_policy::consent::{
    Access, CallerIds, Emergency, PatientBlocks, check_patients, names_actors, resource_withheld,
};
use portvagt_policy::filter::has_next_page;
use portvagt_policy::reach::Owner;
use portvagt_policy::relationship::{RelationVerdict, decide};
use portvagt_policy::request::{BundleKind, PatchFormat, RequestBody};
use portvagt_policy::{Decision, DenyReason, FhirRequest, Reach};

use super::{Proxy, ProxyError, Upstream, append_params};
use crate::body::BoxError;
use crate::consent::ConsentStore;
use crate::context::RequestRecord;
use crate::encoding::form_encode;
use crate::layers::authorize::{count_refusal, refuse};
use crate::proxy::{Backend, Fetched};
use crate::relationship::{Professional, Relationships};

/// The caller as consent and the treatment relationship see them, for one request: present
/// when citizens' blocks are enforced, or the relationship check binds the caller (both
/// withhold data the same way: refused when the request names the patient, else as if it did
/// not exist).
pub(super) struct ConsentContext {
    /// Citizens' blocks, when enforced.
    pub(super) store: Option<Arc<ConsentStore>>,
    /// The treatment relationship, when it binds this caller.
    pub(super) relationships: Option<Arc<Relationships>>,
    /// The caller as the relationship check sees her (no certificate owner), with her cache
    /// key.
    pub(super) professional: Option<Professional>,
    /// Where the request's patients' Consents and the caller's identities are read: the
    /// backend the routes send `Consent` to under the request's FHIR base.
    pub(super) backend: Arc<Backend>,
    pub(super) caller: Arc<CallerIds>,
    pub(super) purpose: Option<String>,
    pub(super) reason: Option<String>,
    /// The patient the caller is (her own token): her blocks are about others, never her.
    pub(super) herself: Option<String>,
}

impl ConsentContext {
    pub(super) fn emergency(&self) -> Emergency<'_> {
        Emergency::new(self.purpose.as_deref(), self.reason.as_deref())
    }
}

/// The patients a request touches before its answer.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Named for certain, written, resolved from identifiers, owners before a write: checked
    /// and recorded.
    pub(super) patients: Vec<String>,
    /// Bare ids that may be patients: checked, not recorded.
    pub(super) possible: Vec<String>,
    /// Per batch entry: its patients (named, written, resolved, owners) and possible ones.
    pub(super) entries: Vec<(usize, Vec<String>)>,
    /// The patients the request names itself (URL, parameters, body, identifiers looked up):
    /// a block of one of them is a refusal it may learn of (403); one reached only through
    /// what the request reads or changes is answered as if nothing were there.
    pub(super) named: Vec<String>,
    /// The same per batch entry, in order.
    pub(super) entry_named: Vec<Vec<String>>,
    /// Per batch entry, in order: the patients its record names (as `patients`, per entry).
    pub(super) entry_patients: Vec<Vec<String>>,
    /// The version of the resource a single write by id changes, as read: the write is bound
    /// to it (`If-Match`), so what was checked is what is changed.
    pub(super) owner_version: Option<String>,
    /// What a write changes names a patient by an identifier that cannot be looked up: whose
    /// data it changes, nobody can say.
    pub(super) owner_unplaceable: bool,
    /// Per batch entry, in order: the version of what it changes by id, as read (the entry is
    /// bound to it with `ifMatch`, as a single write is with `If-Match`).
    pub(super) entry_versions: Vec<Option<String>>,
    /// What a single JSON Patch that can change whose data the resource is changes, as read:
    /// it is applied after the owners' blocks are checked ([`Proxy::patched`]), so that whether
    /// it applies (a `test` that fails) tells nothing of a resource the caller may not reach.
    pub(super) patch_target: Option<Current>,
}

/// How many patients one access by a professional the relationship check binds may reach (each
/// may cost the backend evidence searches).
const MAX_RELATIONSHIP_PATIENTS: usize = 200;

/// How many patients one request may name by identifier (each is looked up at the backend).
const MAX_IDENTIFIER_LOOKUPS: usize = 20;

/// How many identifiers one Patient search looks up at once (`identifier=a,b,…`).
const IDENTIFIERS_PER_SEARCH: usize = 20;

/// How many identifiers the references by identifier only of one answer (or of what one write
/// changes) may use: each [`IDENTIFIERS_PER_SEARCH`] cost the backend a search.
pub(super) const MAX_ANSWER_IDENTIFIERS: usize = 200;

/// Whether any of `blocked` is among `named`.
pub(super) fn overlaps(blocked: &[String], named: &[String]) -> bool {
    blocked.iter().any(|patient| named.contains(patient))
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Proxy {
    /// The patients `request` touches before anything happens, from its [`Reach`]: what it
    /// names, identifiers resolved through the backend, what it writes, and the owners of what
    /// a write to an existing resource changes, read first (the answer comes too late).
    pub(super) async fn touched(
        &self,
        upstream: &Upstream,
        request: &FhirRequest,
        reach: &Reach,
        decisions: &[Decision],
        narrowed: bool,
        patch: Option<&serde_json::Value>,
    ) -> Result<Touched, BoxError> {
        let mut touched = Touched::default();
        // Each identifier is a search at the backend: a bounded number per request.
        if reach.identifiers().len() > MAX_IDENTIFIER_LOOKUPS {
            return Err(ProxyError::TooManyLookups.into());
        }
        let requests: Vec<(&FhirRequest, &Reach)> = match request.body() {
            Some(RequestBody::Bundle { entries, .. }) => {
                entries.iter().zip(reach.entries()).collect()
            }
            _ => vec![(request, reach)],
        };
        for (index, (entry, entry_reach)) in requests.iter().enumerate() {
            let single = std::ptr::eq(*entry, request);
            // An entry policy refused is answered by the gateway and never sent: nothing of it
            // is looked up (the lookups would tell a caller without the scope what is there).
            let refused = !single && decisions.get(index).is_some_and(|d| !d.is_allow());
            let mut named: Vec<String> = Vec::new();
            let mut patients: Vec<String> = Vec::new();
            let mut version = None;
            if !refused {
                named.extend(entry_reach.to_record().map(str::to_owned));
                // A patient-context request (or batch entry) is narrowed to its own patient:
                // whoever else an identifier names, the answer cannot be theirs, so nobody is
                // looked up (a lookup would put them in this access's record and test their
                // Consents).
                let narrowed = if single {
                    narrowed
                } else {
                    decisions.get(index).is_some_and(|decision| {
                        matches!(decision, Decision::Allow { obligations, .. }
                            if obligations.compartment.is_some())
                    })
                };
                if !narrowed {
                    for identifier in entry_reach.identifiers() {
                        named.extend(self.patients_by_identifier(upstream, identifier).await?);
                    }
                }
                patients.clone_from(&named);
                if let Some(owner) = entry_reach.owner() {
                    let owned = self.owners(upstream, owner).await?;
                    patients.extend(owned.patients.iter().cloned());
                    touched.owner_unplaceable |= owned.unplaceable;
                    // A JSON Patch that can change whose data the resource is: applied once
                    // its owners' blocks have let the caller through ([`Self::patched`]).
                    if single && !narrowed && patch.is_some() {
                        touched.patch_target = Some(owned.current);
                    }
                    version = owned.version;
                }
                named.extend(entry_reach.possible().iter().cloned());
                touched
                    .possible
                    .extend(entry_reach.possible().iter().cloned());
            }
            if single {
                touched.owner_version = version;
            } else {
                touched.entry_versions.push(version);
                touched.entry_patients.push(patients.clone());
                let mut checked = patients.clone();
                checked.extend(entry_reach.possible().iter().cloned());
                touched.entries.push((index, checked));
                touched.entry_named.push(named.clone());
            }
            touched.named.extend(named);
            touched.patients.extend(patients);
        }
        for list in [
            &mut touched.patients,
            &mut touched.possible,
            &mut touched.named,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        Ok(touched)
    }

    /// The patients with identifier `token` (as the client wrote it, `system|value`).
    async fn patients_by_identifier(
        &self,
        upstream: &Upstream,
        token: &str,
    ) -> Result<Vec<String>, BoxError> {
        let identified = self.identified(upstream, &[token.to_owned()]).await?;
        Ok(identified.patients_of_identifier(token).to_vec())
    }

    /// The Patients the backend that holds them ([`Upstream::patients`]) has with each of
    /// `tokens` (`system|value`): one search for up to [`IDENTIFIERS_PER_SEARCH`] of them at
    /// once, each Patient found taken for the identifiers it carries as written, and one that
    /// carries none of them so (a server that matches more loosely) for every one. An
    /// identifier no Patient found carries as written is searched again alone, and every
    /// Patient that search finds is taken as its: more patients checked and recorded, never
    /// fewer. More than [`MAX_ANSWER_IDENTIFIERS`]: refused.
    pub(super) async fn identified(
        &self,
        upstream: &Upstream,
        tokens: &[String],
    ) -> Result<Identified, BoxError> {
        if tokens.len() > MAX_ANSWER_IDENTIFIERS {
            return Err(ProxyError::TooManyLookups.into());
        }
        let mut identified = Identified::default();
        let backend = upstream.patients.name();
        // Those placed a moment ago (a Patient's identifiers rarely change) are not searched
        // again: a page of records naming the same few patients by CPR costs one search.
        let mut missing = Vec::new();
        for token in tokens {
            match self.identifier_cache.get(backend, token) {
                Some(ids) => ids.iter().for_each(|id| identified.add(token, id)),
                None => missing.push(token.clone()),
            }
        }
        let lookups = &self.metrics.identifier_lookups;
        lookups
            .with_label_values(&["cache"])
            .inc_by((tokens.len() - missing.len()) as u64);
        lookups
            .with_label_values(&["searched"])
            .inc_by(missing.len() as u64);
        let id = |patient: &serde_json::Value| {
            patient
                .get("id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        for searched in missing.chunks(IDENTIFIERS_PER_SEARCH) {
            let found = self.patients_with(upstream, searched).await?;
            // Found, but carrying none of them as written: which one it was found for, only
            // the server knows. It counts for each.
            let loose: Vec<String> = found
                .iter()
                .filter(|patient| !searched.iter().any(|token| carries(patient, token)))
                .filter_map(id)
                .collect();
            for token in searched {
                let mut placed = loose.clone();
                let carriers: Vec<String> = found
                    .iter()
                    .filter(|patient| carries(patient, token))
                    .filter_map(id)
                    .collect();
                if carriers.is_empty() {
                    let alone = if searched.len() == 1 {
                        found.clone()
                    } else {
                        self.patients_with(upstream, std::slice::from_ref(token))
                            .await?
                    };
                    placed.extend(alone.iter().filter_map(id));
                } else {
                    placed.extend(carriers);
                }
                placed
                    .iter()
                    .for_each(|patient| identified.add(token, patient));
                self.identifier_cache.put(backend, token, placed);
            }
        }
        Ok(identified)
    }

    /// The Patients a search for any of `tokens` finds (`identifier=a,b,…`, each value encoded
    /// on its own so the commas stay the separators a server splits on). Anything but one page
    /// of a Bundle (a 404 too: a server without Patients cannot say whom they name) refuses
    /// the request.
    async fn patients_with(
        &self,
        upstream: &Upstream,
        tokens: &[String],
    ) -> Result<Vec<serde_json::Value>, BoxError> {
        let values: Vec<String> = tokens.iter().map(|token| form_encode(token)).collect();
        let query = format!("identifier={}&_count=100", values.join(","));
        let found = upstream
            .patients
            .fetch_json(
                "Patient",
                Some(&query),
                self.max_response_bytes,
                &self.metrics,
            )
            .await?;
        let Fetched::Found(bundle) = found else {
            return Err(ProxyError::LookupFailed(http::StatusCode::NOT_FOUND).into());
        };
        if has_next_page(&bundle)
            || bundle.get("resourceType").and_then(|t| t.as_str()) != Some("Bundle")
        {
            // Patients on a page not read would be patients not checked.
            return Err(ProxyError::LookupFailed(http::StatusCode::OK).into());
        }
        Ok(portvagt_policy::filter::bundle_resources(&bundle)
            .filter(|resource| {
                resource.get("resourceType").and_then(|t| t.as_str()) == Some("Patient")
                    && resource.get("id").and_then(|id| id.as_str()).is_some()
            })
            .cloned()
            .collect())
    }

    /// Whose data `document` (a JSON Patch) makes what `owned` read: the patch applied to it,
    /// and the result's patients (by id, by identifier looked up, and those a Patient links
    /// to). A patch that cannot be applied (RFC 6902 does not define it), or not to the one
    /// version the write is bound to (a conditional patch, a target missing or without a
    /// version), is unplaceable: what the server would patch cannot be checked.
    pub(super) async fn patched(
        &self,
        upstream: &Upstream,
        target: &Current,
        version: Option<&str>,
        document: &serde_json::Value,
    ) -> Result<Owned, BoxError> {
        // What is patched must be the version read, bound with `If-Match`: a target that is
        // not there yet, one without a version, or a conditional patch's (not bound) could be
        // another by the time the server patches it.
        let current = match target {
            Current::One(current) if version.is_some() => current,
            // Nothing there: as for any write to what is not there (the caller's blocks have
            // been checked; a blocked one got the same answer for what is there).
            Current::Missing => return Err(crate::consent::NotFoundError.into()),
            Current::One(_) => return Ok(Owned::unplaceable()),
        };
        let Some(result) = portvagt_policy::patch::apply_json_patch(document, current) else {
            return Ok(Owned::unplaceable());
        };
        self.written_by(upstream, &result).await
    }

    /// Whom a write of `resource` reaches (whose data it is, and whom a Patient links to: by
    /// id, by identifier looked up), and whether some of it cannot be looked up.
    async fn written_by(
        &self,
        upstream: &Upstream,
        resource: &serde_json::Value,
    ) -> Result<Owned, BoxError> {
        let by_identifier = identifiers_written(resource);
        let identified = if by_identifier.tokens.is_empty() {
            Identified::default()
        } else {
            self.identified(upstream, &by_identifier.tokens).await?
        };
        Ok(Owned {
            patients: identified.patients_written(resource),
            unplaceable: by_identifier.unplaceable,
            ..Owned::default()
        })
    }

    /// The patients of what a write changes, as it is now: the resource at `Type/id`, or what
    /// a conditional write's criteria find (by id, or by an identifier looked up). Nothing
    /// there: none. Anything but 2xx, 404 or 410 refuses the request (503).
    async fn owners(&self, upstream: &Upstream, owner: &Owner) -> Result<Owned, BoxError> {
        let fetched = match owner {
            Owner::Instance(relative) => {
                upstream
                    .backend
                    .fetch_json(relative, None, self.max_response_bytes, &self.metrics)
                    .await?
            }
            Owner::Search {
                resource_type,
                criteria,
            } => {
                let query = append_params("", criteria);
                upstream
                    .backend
                    .fetch_json(
                        resource_type.as_str(),
                        Some(&query),
                        self.max_response_bytes,
                        &self.metrics,
                    )
                    .await?
            }
        };
        let current = match fetched {
            Fetched::Found(current) => current,
            Fetched::Missing => return Ok(Owned::default()),
        };
        // What a conditional write matches beyond the first page would go unchecked.
        let more = has_next_page(&current);
        if more {
            return Err(ProxyError::LookupFailed(http::StatusCode::OK).into());
        }
        let version = current
            .pointer("/meta/versionId")
            .and_then(serde_json::Value::as_str)
            .filter(|_| matches!(owner, Owner::Instance(_)))
            .map(str::to_owned);
        // What a write changes reaches whom it names now, and whom a Patient links to: a
        // delete or an unlink of a Patient that links to hers reaches her.
        let written = self.written_by(upstream, &current).await?;
        // The resource itself, for a patch to be applied to (a conditional write's matches are
        // never patched by the gateway).
        let current = match owner {
            Owner::Instance(_) => Current::One(current),
            Owner::Search { .. } => Current::Missing,
        };
        Ok(Owned {
            version,
            current,
            ..written
        })
    }

    /// Refuses the request if a Consent of any patient it touches denies it to the caller. A
    /// request that named the patient (in its URL, parameters or body) is refused `403
    /// consent-block`; one that reached her only through what it changes (a delete by id) is
    /// answered as if nothing were there. In a batch, the entries refused so are returned (with
    /// their reasons) for the gateway to answer; a transaction is refused whole.
    pub(super) async fn check_consent(
        &self,
        consent: &ConsentContext,
        request: &FhirRequest,
        touched: &Touched,
        record_handle: Option<&RequestRecord>,
    ) -> Result<Vec<(usize, DenyReason)>, BoxError> {
        let now = now();
        let purpose = consent.purpose.as_deref();
        let Some(RequestBody::Bundle { kind, entries }) = request.body() else {
            let mut all = touched.patients.clone();
            all.extend(touched.possible.iter().cloned());
            if all.is_empty() {
                return Ok(Vec::new());
            }
            let access = Access::for_request(request, purpose, now);
            let found = self
                .consent_verdict(
                    consent,
                    &all,
                    &access,
                    request.interaction().is_write(),
                    record_handle,
                )
                .await?;
            let refused = found.refused();
            if refused.is_empty() {
                return Ok(Vec::new());
            }
            return Err(if overlaps(&refused, &touched.named) {
                self.consent_denial(&found, &touched.named, record_handle)
            } else {
                self.withheld(&refused, record_handle)
            });
        };
        let mut refusals = Vec::new();
        for (index, patients) in &touched.entries {
            let Some(entry) = entries.get(*index) else {
                continue;
            };
            if patients.is_empty() {
                continue;
            }
            let access = Access::for_request(entry, purpose, now);
            let found = self
                .consent_verdict(
                    consent,
                    patients,
                    &access,
                    entry.interaction().is_write(),
                    record_handle,
                )
                .await?;
            let refused = found.refused();
            if refused.is_empty() {
                continue;
            }
            let entry_named = touched
                .entry_named
                .get(*index)
                .map_or(&[][..], Vec::as_slice);
            let named = overlaps(&refused, entry_named);
            if *kind == BundleKind::Transaction {
                // All or nothing: the whole transaction is refused, as a single request would be.
                return Err(if named {
                    self.consent_denial(&found, entry_named, record_handle)
                } else {
                    self.withheld(&refused, record_handle)
                });
            }
            let reason = if named {
                found.reason(entry_named)
            } else {
                DenyReason::Withheld
            };
            count_refusal(&self.metrics, reason);
            refusals.push((*index, reason));
        }
        Ok(refusals)
    }

    /// The Consents of the patients in an answer, and those of them that may withhold
    /// something from the caller (decided resource by resource with [`resource_withheld`]); a
    /// block lifted by break-the-glass is recorded on the way. Resources that name a patient
    /// by an identifier that cannot be looked up are withheld (`placed.unplaceable`): whether
    /// their patient blocks the caller, nobody can say. Nothing without consent enforcement,
    /// or with nothing to withhold.
    pub(super) async fn answer_blocks(
        &self,
        consent: Option<&ConsentContext>,
        patients: &[String],
        placed: Placed,
        record_handle: Option<&RequestRecord>,
    ) -> Result<Option<AnswerBlocks>, BoxError> {
        let Some(consent) = consent else {
            return Ok(None);
        };
        if patients.is_empty() && !placed.unplaceable {
            return Ok(None);
        }
        // Not knowing which resource yet: any Consent that could deny one of them counts.
        let access = Access {
            resource_type: None,
            resource: None,
            purpose: consent.purpose.as_deref(),
            now: now(),
            unknown_denies: true,
        };
        let found = self
            .consent_verdict(consent, patients, &access, false, record_handle)
            .await?;
        let refused = found.refused();
        Ok(
            (!refused.is_empty() || placed.unplaceable).then(|| AnswerBlocks {
                patients: refused,
                reason_of_named: found.reason(&[]),
                consent_blocked: found.blocked,
                unrelated: found.unrelated,
                blocks: found.blocks,
                caller: found.caller,
                purpose: consent.purpose.clone(),
                placed,
            }),
        )
    }

    async fn consent_verdict(
        &self,
        consent: &ConsentContext,
        patients: &[String],
        access: &Access<'_>,
        writes: bool,
        record_handle: Option<&RequestRecord>,
    ) -> Result<Verdicts, BoxError> {
        // Her own blocks never shut her out of her own record (she may block the unit she
        // works at, or her own authorisation id).
        let others: Vec<String> = patients
            .iter()
            .filter(|patient| consent.herself.as_ref() != Some(*patient))
            .cloned()
            .collect();
        let blocks = match &consent.store {
            Some(store) => store.blocks(&consent.backend, &others).await?,
            None => PatientBlocks::new(),
        };
        // The caller's other identities matter only where some Consent names somebody.
        let caller = match &consent.store {
            Some(store) if names_actors(&blocks) => {
                store.identify(&consent.backend, &consent.caller).await?
            }
            _ => consent.caller.clone(),
        };
        let checked = check_patients(patients, &blocks, &caller, access, consent.emergency());
        if !checked.broken_glass.is_empty()
            && let Some(record_handle) = record_handle
        {
            let mut fields = record_handle.fields();
            if fields.break_glass.is_none() {
                fields.break_glass = consent.reason.clone();
                self.metrics.break_glass.inc();
                tracing::warn!(
                    reason = consent.reason.as_deref().unwrap_or_default(),
                    "break-the-glass: a consent block was set aside"
                );
            }
            for patient in checked.broken_glass {
                if !fields.break_glass_patients.contains(&patient) {
                    fields.break_glass_patients.push(patient);
                }
            }
        }
        let unrelated = match &consent.relationships {
            Some(relationships) => {
                self.relationship_verdict(relationships, consent, patients, writes, record_handle)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(Verdicts {
            blocked: checked.blocked,
            unrelated,
            emergency_without_reason: consent.emergency() == Emergency::WithoutReason,
            blocks,
            caller,
        })
    }

    /// The treatment relationship with each of `patients`: the basis of each access recorded
    /// (the evidence, or værdispring with its reason, to be followed up), and the patients
    /// without one returned, with whether EMERGENCY was claimed without the reason that would
    /// have let it through. Not found out: refused (503).
    async fn relationship_verdict(
        &self,
        relationships: &Relationships,
        consent: &ConsentContext,
        patients: &[String],
        writes: bool,
        record_handle: Option<&RequestRecord>,
    ) -> Result<Vec<String>, BoxError> {
        let checks = &self.metrics.relationship_checks;
        let Some(professional) = &consent.professional else {
            return Ok(Vec::new());
        };
        // A patient this request was already found to be related to (or reached by værdispring)
        // is not asked again when its answer is checked. A write is always asked: værdispring
        // recorded for a read (another entry of the same batch) never lets a write through.
        let asked: Vec<String> = match record_handle {
            Some(record) if !writes => {
                let fields = record.fields();
                patients
                    .iter()
                    .filter(|patient| !fields.bases.iter().any(|(p, _)| p == *patient))
                    .cloned()
                    .collect()
            }
            _ => patients.to_vec(),
        };
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let patients = asked.as_slice();
        // Each patient may cost the backend (or the relation service) a search: one access
        // reaches at most this many.
        if patients.len() > MAX_RELATIONSHIP_PATIENTS {
            return Err(self.deny(DenyReason::TooManyPatients, record_handle, None));
        }
        let found = match relationships
            .evidence(&consent.backend, professional, &asked)
            .await
        {
            Ok(found) => found,
            Err(unavailable) => {
                checks.with_label_values(&["unavailable"]).inc();
                return Err(unavailable.into());
            }
        };
        // Værdispring is a look-up: it never lets a write into a record without a
        // relationship (a write there could make the evidence that ends the follow-up).
        let emergency = if writes {
            Emergency::None
        } else {
            consent.emergency()
        };
        let mut unrelated = Vec::new();
        let mut fields = record_handle.map(RequestRecord::fields);
        for patient in patients {
            let evidence = found.get(patient).cloned().flatten();
            let (basis, outcome) = match decide(evidence.as_deref(), emergency) {
                RelationVerdict::Related { evidence } => {
                    (format!("relationship {evidence}"), "related")
                }
                RelationVerdict::Vaerdispring => ("vaerdispring".to_owned(), "vaerdispring"),
                RelationVerdict::Refused => {
                    checks.with_label_values(&["refused"]).inc();
                    unrelated.push(patient.clone());
                    continue;
                }
            };
            let Some(fields) = fields.as_mut() else {
                checks.with_label_values(&[outcome]).inc();
                continue;
            };
            // Each patient's basis once per request (the answer is checked again).
            if fields.bases.iter().any(|(p, _)| p == patient) {
                continue;
            }
            checks.with_label_values(&[outcome]).inc();
            if outcome == "vaerdispring" {
                if fields.break_glass.is_none() {
                    fields.break_glass = consent.reason.clone();
                }
                if !fields.break_glass_patients.contains(patient) {
                    fields.break_glass_patients.push(patient.clone());
                }
                tracing::warn!(
                    reason = consent.reason.as_deref().unwrap_or_default(),
                    "værdispring: a patient's data read without a treatment relationship"
                );
            }
            fields.bases.push((patient.clone(), basis));
        }
        Ok(unrelated)
    }

    /// The refusal of a request that named a patient it may not reach: for her block, for
    /// the missing treatment relationship, or for EMERGENCY claimed without a reason.
    fn consent_denial(
        &self,
        found: &Verdicts,
        named: &[String],
        record_handle: Option<&RequestRecord>,
    ) -> BoxError {
        self.deny(found.reason(named), record_handle, Some(&found.refused()))
    }

    /// The refusal of a request whose answer, asked for by the patient's name, may not be
    /// given.
    pub(super) fn answer_denial(
        &self,
        blocks: &AnswerBlocks,
        record_handle: Option<&RequestRecord>,
    ) -> BoxError {
        self.deny(
            blocks.reason_of_named,
            record_handle,
            Some(&blocks.patients),
        )
    }

    /// A read withheld without saying so (the request did not name the patient): recorded as
    /// refused for the patients' logs, answered as a resource that does not exist.
    pub(super) fn withheld(
        &self,
        patients: &[String],
        record_handle: Option<&RequestRecord>,
    ) -> BoxError {
        self.as_missing(DenyReason::ConsentBlock, record_handle, Some(patients))
    }

    /// Another patient's resource asked for by id: recorded as the refusal it is
    /// (`outside-compartment`), answered as a missing one, so that whether it exists is not the
    /// caller's to learn.
    pub(super) fn refused_as_missing(&self, record_handle: Option<&RequestRecord>) -> BoxError {
        self.as_missing(DenyReason::OutsideCompartment, record_handle, None)
    }

    /// A refusal recorded as [`Self::deny`] records it, answered as a resource that does not
    /// exist.
    fn as_missing(
        &self,
        reason: DenyReason,
        record_handle: Option<&RequestRecord>,
        patients: Option<&[String]>,
    ) -> BoxError {
        let _ = self.deny(reason, record_handle, patients);
        crate::consent::NotFoundError.into()
    }

    /// A refusal: recorded (decision, reason, and the patients whose logs must show the
    /// attempt), counted, and returned as the error the rescue layer answers.
    pub(super) fn deny(
        &self,
        reason: DenyReason,
        record_handle: Option<&RequestRecord>,
        patients: Option<&[String]>,
    ) -> BoxError {
        refuse(&self.metrics, reason, record_handle, patients)
    }
}

struct Verdicts {
    /// Patients whose Consent blocks the caller.
    blocked: Vec<String>,
    /// Patients the caller (bound by the relationship check) has no relationship with.
    unrelated: Vec<String>,
    emergency_without_reason: bool,
    blocks: PatientBlocks,
    caller: Arc<CallerIds>,
}

impl Verdicts {
    /// Every patient the caller may not reach.
    fn refused(&self) -> Vec<String> {
        let mut refused = self.blocked.clone();
        refused.extend(self.unrelated.iter().cloned());
        refused.sort_unstable();
        refused.dedup();
        refused
    }

    /// Why a request naming `named` is refused: EMERGENCY without a reason (either would have
    /// been set aside with one), a block of a named patient, else no relationship. With no
    /// `named` (an answer asked for by its patient's name), a block first.
    fn reason(&self, named: &[String]) -> DenyReason {
        let blocks_named = if named.is_empty() {
            !self.blocked.is_empty()
        } else {
            overlaps(&self.blocked, named)
        };
        if self.emergency_without_reason {
            DenyReason::BreakGlassReasonRequired
        } else if blocks_named {
            DenyReason::ConsentBlock
        } else {
            DenyReason::RelationshipRequired
        }
    }
}

/// How long patients placed by identifier are kept: as long as a Consent is by default
/// (`[consent] cache_ttl`). A Patient given an identifier (or a new Patient) is found by it
/// at the latest this long after.
const IDENTIFIERS_KEPT_FOR: Duration = Duration::from_secs(30);

/// How many placed identifiers are kept at most: past it, those kept too long go, and if that
/// is not enough, all.
const MAX_IDENTIFIERS_KEPT: usize = 50_000;

/// The patients each identifier (`system|value`) was found on, per backend, for
/// [`IDENTIFIERS_KEPT_FOR`] (none found is kept too).
#[derive(Debug, Default)]
pub(super) struct IdentifierCache {
    placed: Mutex<HashMap<String, Kept>>,
}

/// The patients one identifier was found on, and when.
#[derive(Debug)]
struct Kept {
    at: Instant,
    patients: Arc<[String]>,
}

impl IdentifierCache {
    fn key(backend: &str, token: &str) -> String {
        format!("{backend}\u{0}{token}")
    }

    fn get(&self, backend: &str, token: &str) -> Option<Arc<[String]>> {
        let placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        placed
            .get(&Self::key(backend, token))
            .filter(|kept| kept.at.elapsed() < IDENTIFIERS_KEPT_FOR)
            .map(|kept| kept.patients.clone())
    }

    fn put(&self, backend: &str, token: &str, ids: Vec<String>) {
        let mut placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
        if placed.len() >= MAX_IDENTIFIERS_KEPT {
            placed.retain(|_, kept| kept.at.elapsed() < IDENTIFIERS_KEPT_FOR);
            if placed.len() >= MAX_IDENTIFIERS_KEPT {
                placed.clear();
            }
        }
        placed.insert(
            Self::key(backend, token),
            Kept {
                at: Instant::now(),
                patients: ids.into(),
            },
        );
    }
}

/// What a write changes, as it is before the write.
#[derive(Debug, Default)]
pub(super) struct Owned {
    /// Whose data it is: by id, or by an identifier looked up.
    pub(super) patients: Vec<String>,
    /// The version read, of a write by id.
    version: Option<String>,
    /// It names a patient by an identifier that cannot be looked up.
    pub(super) unplaceable: bool,
    /// The resource itself, for a patch to be applied to.
    current: Current,
}

impl Owned {
    fn unplaceable() -> Owned {
        Owned {
            unplaceable: true,
            ..Owned::default()
        }
    }
}

/// What a write by id changes, as read.
#[derive(Debug, Default)]
pub(super) enum Current {
    /// Nothing there (or a conditional write, whose matches the gateway never patches).
    #[default]
    Missing,
    One(serde_json::Value),
}

/// The JSON Patch of `request`, if it can change a compartment element (whose data the
/// resource is, `id` or `contained`).
pub(super) fn compartment_patch(request: &FhirRequest) -> Option<&serde_json::Value> {
    let Some(RequestBody::Patch {
        document,
        format: PatchFormat::JsonPatch,
    }) = request.body()
    else {
        return None;
    };
    let resource_type = request.resource_type()?;
    portvagt_policy::patch::touches_compartment(
        resource_type.as_str(),
        PatchFormat::JsonPatch,
        document,
    )
    .then_some(document)
}

/// Whether `patient` carries the identifier `token` (`system|value`) as written.
fn carries(patient: &serde_json::Value, token: &str) -> bool {
    let Some((system, value)) = token.split_once('|') else {
        return false;
    };
    patient
        .get("identifier")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .any(|identifier| {
            identifier.get("system").and_then(|s| s.as_str()) == Some(system)
                && identifier.get("value").and_then(|v| v.as_str()) == Some(value)
        })
}

/// The Consents that may withhold part of an answer.
pub(super) struct AnswerBlocks {
    /// The patients whose Consents may withhold something, or who the caller has no
    /// relationship with.
    pub(super) patients: Vec<String>,
    /// Why an answer asked for by its patient's name is refused.
    reason_of_named: DenyReason,
    consent_blocked: Vec<String>,
    /// The patients whose every resource is withheld: no treatment relationship.
    unrelated: Vec<String>,
    blocks: PatientBlocks,
    caller: Arc<CallerIds>,
    purpose: Option<String>,
    placed: Placed,
}

/// How an answer's references by identifier only were placed.
#[derive(Debug, Default)]
pub(super) struct Placed {
    /// The patients found for the identifiers they use.
    pub(super) identified: Identified,
    /// Some cannot be looked up.
    pub(super) unplaceable: bool,
}

impl AnswerBlocks {
    /// The patients found for the answer's identifiers.
    pub(super) fn identified(&self) -> &Identified {
        &self.placed.identified
    }

    /// Whether `resource` is withheld.
    pub(super) fn withholds(&self, resource: &serde_json::Value) -> bool {
        if resource
            .get("resourceType")
            .and_then(serde_json::Value::as_str)
            == Some("Bundle")
        {
            return portvagt_policy::filter::bundle_resources(resource)
                .any(|inner| self.withholds(inner));
        }
        if self.placed.unplaceable && portvagt_policy::compartment::unplaceable(resource) {
            return true;
        }
        if !self.unrelated.is_empty()
            && self
                .placed
                .identified
                .patients_of(resource)
                .iter()
                .any(|patient| self.unrelated.contains(patient))
        {
            return true;
        }
        !self.consent_blocked.is_empty()
            && resource_withheld(
                resource,
                &self.placed.identified,
                &self.blocks,
                &self.caller,
                self.purpose.as_deref(),
                now(),
            )
    }
}
