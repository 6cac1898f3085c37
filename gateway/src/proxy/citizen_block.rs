//! A citizen making or lifting her own block on the citizen listener
//! ([`Obligations::citizen_block`](portvagt_policy::Obligations)): answered here, never
//! forwarded. What she may ask is read by [`portvagt_policy::consent::citizen`]; here the
//! AuditEvent she took the actor from is read from the audit repository (it must be of her own
//! log, and name that actor), the Consent the gateway builds is written to the backend that
//! holds Consents (bound to the version read, when lifted), this replica's consent cache forgets
//! her blocks, and the audit record says what changed ("Du spærrede for …").

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use portvagt_policy::compartment::{Membership, membership};
use portvagt_policy::consent::citizen::{
    BLOCK_TAG_CODE, BLOCK_TAG_SYSTEM, BlockRefusal, MAX_ACTIVE_BLOCKS, MadeBlock, actors_in_event,
    blocked_display, build, carries_block_tag, matching_actor, read_block, read_request,
    read_withdrawal,
};
use portvagt_policy::request::RequestBody;
use portvagt_policy::{DenyReason, FhirRequest, Interaction};
use serde_json::Value;
use time::OffsetDateTime;

use super::{Backend, Fetched, Proxy, ProxyError};
use crate::auth::Principal;
use crate::body::{Body, BoxError, full};
use crate::context::{CitizenBlockRecord, RequestRecord};
use crate::encoding::form_encode;
use crate::layers::request_id::RequestId;
use crate::routing::FhirPath;

/// Why a citizen's block or withdrawal was not made (answered 422 for another shape, 403 for
/// what is not hers to make), with what the rule is.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct CitizenBlockError(pub BlockRefusal);

impl CitizenBlockError {
    /// The rule, for her.
    pub fn message(&self) -> &'static str {
        match self.0 {
            BlockRefusal::Shape(message) | BlockRefusal::Refused(message) => message,
        }
    }
}

fn refused(message: &'static str) -> BoxError {
    CitizenBlockError(BlockRefusal::Refused(message)).into()
}

fn shape(message: &'static str) -> BoxError {
    CitizenBlockError(BlockRefusal::Shape(message)).into()
}

/// Changes of one citizen's blocks, one at a time on a replica (striped by patient): the bound
/// and the block she already has are read and kept in one step.
#[derive(Debug)]
pub(super) struct BlockLocks([tokio::sync::Mutex<()>; 64]);

impl Default for BlockLocks {
    fn default() -> Self {
        BlockLocks(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl BlockLocks {
    async fn lock(&self, patient: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(patient);
        self.0[usize::try_from(hash % 64).unwrap_or(0)].lock().await
    }
}

/// Forgets and announces a patient's Consents: now, or when dropped (a request cancelled while
/// its write was under way), from a task of its own.
struct Announce(Option<(Arc<crate::consent::ConsentStore>, String)>);

impl Announce {
    /// Forgets and announces now, from a task of its own: a request cancelled meanwhile does
    /// not cancel the announcement.
    async fn now(mut self) {
        if let Some((store, patient)) = self.0.take() {
            let _ = tokio::spawn(async move { store.changed(&patient).await }).await;
        }
    }
}

impl Drop for Announce {
    fn drop(&mut self) {
        if let Some((store, patient)) = self.0.take() {
            tokio::spawn(async move { store.changed(&patient).await });
        }
    }
}

/// What the handler needs of the request.
struct Asked {
    fhir: Arc<FhirRequest>,
    principal: Arc<Principal>,
    patient: String,
    base: String,
    request_id: Option<String>,
    record: Option<RequestRecord>,
}

impl Proxy {
    /// Makes or lifts the caller's block (see the module documentation).
    pub(super) async fn citizen_block(
        &self,
        request: Request<Body>,
        patient: String,
    ) -> Result<Response<Body>, BoxError> {
        let extensions = request.extensions();
        let asked = Asked {
            fhir: extensions
                .get::<Arc<FhirRequest>>()
                .cloned()
                .ok_or("request reached the proxy unclassified")?,
            principal: extensions
                .get::<Arc<Principal>>()
                .cloned()
                .ok_or("request reached the proxy unauthenticated")?,
            base: extensions
                .get::<FhirPath>()
                .map(|path| path.base.clone())
                .ok_or("request reached the proxy unclassified")?,
            request_id: extensions
                .get::<RequestId>()
                .map(|id| id.as_str().to_owned()),
            record: extensions.get::<RequestRecord>().cloned(),
            patient,
        };
        // Whatever becomes of it, it is an access to her record: in her log.
        if let Some(record) = &asked.record {
            let mut fields = record.fields();
            fields.touched = Some(vec![asked.patient.clone()]);
            fields.patients = vec![asked.patient.clone()];
        }
        match asked.fhir.interaction() {
            Interaction::Create => self.make_block(&asked).await,
            Interaction::Patch => self.lift_block(&asked).await,
            _ => Err("not a citizen's block change".into()),
        }
    }

    async fn make_block(&self, asked: &Asked) -> Result<Response<Body>, BoxError> {
        let Some(RequestBody::Resource(body)) = asked.fhir.body() else {
            return Err(shape("a block is a Consent, as FHIR JSON"));
        };
        let now = OffsetDateTime::now_utc();
        let wanted =
            read_request(body, &asked.patient, now.unix_timestamp()).map_err(CitizenBlockError)?;
        // The event: in the audit repository, of her own log, naming that actor.
        let repository = self.route(asked, "AuditEvent")?.backend;
        let event = match self
            .read_one(&repository, &format!("AuditEvent/{}", wanted.event))
            .await?
        {
            Fetched::Found(event) => event,
            Fetched::Missing => return Err(refused("the AuditEvent is not in her access log")),
        };
        if event.get("resourceType").and_then(Value::as_str) != Some("AuditEvent")
            || membership(&event, &asked.patient) != Membership::Member
        {
            return Err(refused("the AuditEvent is not in her access log"));
        }
        let actor = matching_actor(&actors_in_event(&event), &wanted.actor).ok_or_else(|| {
            refused("the actor is not the user or organisation of that AuditEvent")
        })?;
        // One change of her blocks at a time (on this replica): the bound and the block she has
        // are read and kept in one step.
        // Held across the backend's answers on purpose: the next change of her blocks waits
        // for this one (an async lock, and only hers and those striped with her wait).
        let _one_at_a_time = self.block_locks.lock(&asked.patient).await;
        // Her blocks made here and in force: the same block again (the same actor, the same
        // period) is the block she has; more than the bound, none.
        let consents = self.route(asked, "Consent")?;
        let in_force = self
            .active_blocks(&consents.backend, &asked.patient, now.unix_timestamp())
            .await?;
        if let Some((existing, _)) = in_force
            .iter()
            .find(|(_, made)| made.actor == actor.actor && made.period == wanted.period)
        {
            // Announced again: a first attempt may have been written without being announced.
            self.announce(asked).now().await;
            self.note(asked, "made", existing, false);
            return Ok(fhir_json(StatusCode::OK, existing, None));
        }
        if in_force.len() >= MAX_ACTIVE_BLOCKS {
            return Err(shape(
                "she has as many active blocks as she may keep (10): lift one first",
            ));
        }
        let recorded = now
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let consent = build(&asked.patient, &actor, &wanted, &recorded);
        // Never written unless the consent check reads it as the block she asked for.
        if portvagt_policy::consent::blocks_in(&consent).is_none() {
            return Err("a built block is not read as one".into());
        }
        let (status, written, location) = self
            .write(
                &consents.backend,
                asked,
                Method::POST,
                "Consent",
                None,
                &consent,
            )
            .await?;
        self.note(asked, "made", &written, true);
        let location = location.and_then(|l| consents.rewriter.rewrite(&l));
        Ok(fhir_json(status, &written, location))
    }

    /// One resource the gateway reads by its id for a block (the event named, the Consent to
    /// lift or to guard), no larger than a resource is.
    async fn read_one(&self, backend: &Backend, relative: &str) -> Result<Fetched, BoxError> {
        backend
            .fetch_json(relative, None, 1024 * 1024, &self.metrics)
            .await
    }

    async fn lift_block(&self, asked: &Asked) -> Result<Response<Body>, BoxError> {
        let Some(RequestBody::Patch { document, .. }) = asked.fhir.body() else {
            return Err(shape("a block is lifted by a JSON Patch"));
        };
        read_withdrawal(document).map_err(CitizenBlockError)?;
        let id = asked.fhir.id().ok_or("a patch names its instance")?;
        // Held across the backend's answers on purpose: the next change of her blocks waits
        // for this one (an async lock, and only hers and those striped with her wait).
        let _one_at_a_time = self.block_locks.lock(&asked.patient).await;
        let consents = self.route(asked, "Consent")?.backend;
        let relative = format!("Consent/{id}");
        let current = match self.read_one(&consents, &relative).await? {
            Fetched::Found(current) => current,
            Fetched::Missing => return Err(crate::consent::NotFoundError.into()),
        };
        let Some(made) = read_block(&current, &asked.patient) else {
            // Another patient's Consent: as if it were not there for her, like every record
            // outside her compartment. Hers, but not exactly a block made here (a professional
            // may have tagged one): not hers to change here.
            return Err(
                if membership(&current, &asked.patient) == Membership::Member {
                    refused("only a block she made here is hers to lift here")
                } else {
                    crate::consent::NotFoundError.into()
                },
            );
        };
        if !made.active {
            self.announce(asked).now().await;
            self.note(asked, "lifted", &current, false);
            return Ok(fhir_json(StatusCode::OK, &current, None));
        }
        let version = current
            .pointer("/meta/versionId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(ProxyError::LookupFailed(StatusCode::OK))?;
        let mut lifted = current;
        lifted["status"] = Value::String("inactive".into());
        let (_, written, _) = self
            .write(
                &consents,
                asked,
                Method::PUT,
                &relative,
                Some(&version),
                &lifted,
            )
            .await?;
        self.note(asked, "lifted", &written, true);
        Ok(fhir_json(StatusCode::OK, &written, None))
    }

    /// Her Consents to forget and announce (see [`Announce`]).
    fn announce(&self, asked: &Asked) -> Announce {
        Announce(
            self.consent
                .clone()
                .map(|store| (store, asked.patient.clone())),
        )
    }

    /// On the main listener, where citizens block: no write may change a citizen's block. One
    /// of an instance is refused if what it would change carries the tag (a patch of its actor,
    /// say, carries none itself); a conditional one, whose targets cannot be read first, is
    /// refused whole; so are the entries of a batch or transaction that would.
    pub(super) async fn spares_citizen_blocks(
        &self,
        backend: &Backend,
        fhir: &FhirRequest,
        decisions: &[portvagt_policy::Decision],
        record: Option<&RequestRecord>,
    ) -> Result<(), BoxError> {
        // A batch's entries the policy refused are answered so, and nothing of them is read.
        let entries: Vec<&FhirRequest> = match fhir.body() {
            Some(portvagt_policy::request::RequestBody::Bundle { entries, .. }) => entries
                .iter()
                .enumerate()
                .filter(|(index, _)| decisions.get(*index).is_some_and(|d| d.is_allow()))
                .map(|(_, entry)| entry)
                .collect(),
            _ => vec![fhir],
        };
        for request in entries {
            if request
                .resource_type()
                .is_none_or(|t| t.as_str() != "Consent")
            {
                continue;
            }
            // Whose block it would change, when it would change one (`Some(None)`: a
            // conditional write, whose targets cannot be read first): the attempt is in her log.
            let block_of = match (request.interaction(), request.id()) {
                (
                    Interaction::ConditionalUpdate
                    | Interaction::ConditionalPatch
                    | Interaction::ConditionalDelete,
                    _,
                ) => Some(None),
                (Interaction::Update | Interaction::Patch | Interaction::Delete, Some(id)) => {
                    match self.read_one(backend, &format!("Consent/{id}")).await? {
                        Fetched::Found(current) if carries_block_tag(&current) => Some(
                            current
                                .pointer("/patient/reference")
                                .and_then(Value::as_str)
                                .and_then(portvagt_policy::compartment::patient_reference_id)
                                .map(str::to_owned),
                        ),
                        Fetched::Found(_) | Fetched::Missing => None,
                    }
                }
                _ => None,
            };
            if let Some(owner) = block_of {
                let owners: Vec<String> = owner.into_iter().collect();
                let named = (!owners.is_empty()).then_some(owners.as_slice());
                return Err(self.deny(DenyReason::CitizenBlockReserved, record, named));
            }
        }
        Ok(())
    }

    /// The route that takes `resource_type` under her request's base.
    fn route(&self, asked: &Asked, resource_type: &str) -> Result<super::Upstream, BoxError> {
        self.upstream_for(&asked.base, Some(resource_type))
            .ok_or_else(|| portvagt_policy::ClassifyError::UnknownPath.into())
    }

    /// The blocks `patient` made here that are in force at `now` or later, all of them (on one
    /// page, or refused), each as stored and as read back.
    async fn active_blocks(
        &self,
        consents: &Backend,
        patient: &str,
        now: i64,
    ) -> Result<Vec<(Value, MadeBlock)>, BoxError> {
        // Only hers made here (a server's page of her other Consents could fill the answer).
        let query = format!(
            "patient={}&status=active&_tag={}&_count=200",
            form_encode(&format!("Patient/{patient}")),
            form_encode(&format!("{BLOCK_TAG_SYSTEM}|{BLOCK_TAG_CODE}"))
        );
        let bundle = match consents
            .fetch_json("Consent", Some(&query), 4 * 1024 * 1024, &self.metrics)
            .await?
        {
            Fetched::Found(bundle) => bundle,
            Fetched::Missing => return Err(ProxyError::LookupFailed(StatusCode::NOT_FOUND).into()),
        };
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || portvagt_policy::filter::has_next_page(&bundle)
        {
            return Err(ProxyError::LookupFailed(StatusCode::OK).into());
        }
        Ok(portvagt_policy::filter::bundle_resources(&bundle)
            .filter_map(|consent| {
                read_block(consent, patient)
                    .filter(|made| made.in_force(now))
                    .map(|made| (consent.clone(), made))
            })
            .collect())
    }

    /// Writes `resource` to `relative` in `backend`, in the citizen's name (the identity
    /// assertion, when the backend takes one, says she asked), bound to `version` if given.
    /// Returns the backend's status, what it stored, and its `Location`.
    async fn write(
        &self,
        backend: &Backend,
        asked: &Asked,
        method: Method,
        relative: &str,
        version: Option<&str>,
        resource: &Value,
    ) -> Result<(StatusCode, Value, Option<String>), BoxError> {
        let body = Bytes::from(serde_json::to_vec(resource)?);
        let digest = crate::backend::identity::ForwardedBody(body.clone()).sha256();
        let mut request = Request::builder()
            .method(method)
            .uri(backend.uri(relative, None)?)
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .header(header::ACCEPT, "application/fhir+json")
            .header("prefer", "return=representation");
        if let Some(version) = version {
            request = request.header(header::IF_MATCH, format!("W/\"{version}\""));
        }
        let mut request = request.body(full(body))?;
        if backend.identity.is_some() {
            request
                .extensions_mut()
                .insert(super::request::actor_claims(
                    &self.public_base_url,
                    &asked.principal,
                    asked.request_id.as_deref(),
                    None,
                    Some(&digest),
                ));
        }
        if let Some(traced) = crate::trace::current() {
            request.extensions_mut().insert(traced);
        }
        // Once sent, the write may have been made whatever comes back (an error, no answer in
        // time, the request dropped): her Consents are forgotten and announced in every case.
        let announce = self.announce(asked);
        let response = backend.send(request, &self.metrics).await;
        announce.now().await;
        let response = response?;
        let status = response.status();
        if let Some(record) = &asked.record {
            record.fields().upstream_status = Some(status.as_u16());
        }
        if status == StatusCode::PRECONDITION_FAILED || status == StatusCode::CONFLICT {
            return Err(ProxyError::PreconditionFailed.into());
        }
        if status.is_server_error() {
            return Err(ProxyError::BackendStatus(status).into());
        }
        if !status.is_success() {
            return Err(ProxyError::LookupFailed(status).into());
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let bytes = crate::backend::read_limited(response.into_body(), 1024 * 1024).await?;
        let written = crate::strict_json::tree_unique(&bytes)
            .ok()
            .filter(|w| w.get("resourceType").and_then(Value::as_str) == Some("Consent"))
            .ok_or(ProxyError::UnreadableAnswer)?;
        Ok((status, written, location))
    }

    /// What changed, for the audit record; `counted` when this request changed it (not when
    /// it found it so already).
    fn note(&self, asked: &Asked, change: &'static str, consent: &Value, counted: bool) {
        if let Some(record) = &asked.record {
            record.fields().citizen_block = Some(CitizenBlockRecord {
                change,
                consent: consent
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                display: blocked_display(consent).map(str::to_owned),
            });
        }
        if counted {
            self.metrics
                .citizen_blocks
                .with_label_values(&[change])
                .inc();
        }
    }
}

/// A FHIR JSON answer: the Consent, its `meta` only its version, when, and the tag (nothing
/// of where the server keeps it).
fn fhir_json(status: StatusCode, resource: &Value, location: Option<String>) -> Response<Body> {
    let mut resource = resource.clone();
    if let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) {
        meta.retain(|key, _| matches!(key.as_str(), "versionId" | "lastUpdated" | "tag"));
    }
    let body = serde_json::to_vec(&resource).unwrap_or_default();
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}
