//! The request phase: what the proxy does before anything reaches the backend. It takes the
//! classified, authorised request, finds the route, narrows the search, reads the target of a
//! patient-context write, works out whose data the request touches and checks citizens'
//! blocks against it, plans a batch (answering entries the gateway refuses itself), and builds
//! the request the backend gets.

use std::ops::ControlFlow;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt as _;
use portvagt_policy::compartment::Identified;
use portvagt_policy::consent::{Duties, count_only, shape_refusal};
use portvagt_policy::operations::Kind;
use portvagt_policy::request::RequestBody;
use portvagt_policy::{Decision, DenyReason, FhirRequest, Interaction, Obligations, Reach};

use super::bundle::{self, BatchPlan};
use super::consent::{ConsentContext, Touched, compartment_patch};
use super::{
    Proxy, Upstream, append_params, entry_records, fhir_json_response, headers, response_check,
    widen_elements,
};
use crate::auth::Principal;
use crate::backend::identity::{Actor, ActorClaims, ForwardedBody};
use crate::body::{Body, BoxError, full};
use crate::consent::{BREAK_GLASS_HEADER, caller_ids};
use crate::context::{ClientAddr, RequestRecord};
use crate::layers::request_id::RequestId;
use crate::mass_lookup::Admission;
use crate::paging::{LinkKind, PageFollow, PageOrigin};
use crate::relationship::Professional;
use crate::routing::FhirPath;
use crate::trace::{Phase, Traced};

/// What the request phase learned, for the exchange and the response phase.
pub(super) struct Exchange {
    pub(super) fhir: Arc<FhirRequest>,
    pub(super) obligations: Obligations,
    pub(super) upstream: Upstream,
    /// A citizen reading their own audit log: newest first, in the citizen's view.
    pub(super) citizen_view: bool,
    pub(super) record_handle: Option<RequestRecord>,
    pub(super) consent: Option<ConsentContext>,
    pub(super) touched: Touched,
    /// The answer's `total` goes (it would count what blocks withhold).
    pub(super) strip_total: bool,
    pub(super) batch: Option<BatchPlan>,
    pub(super) is_head: bool,
    /// The request the paging links in the answer continue, when they are signed.
    pub(super) page_origin: Option<PageOrigin>,
    /// The request followed a signed link of this kind.
    pub(super) followed: Option<LinkKind>,
    /// The professional the mass-lookup guard counts for, if it binds the caller.
    pub(super) professional: Option<String>,
}

/// The request phase's outcome: the gateway answers itself (`Break`: a batch whose every entry
/// it refused), or the exchange goes on with this request for the backend (`Continue`).
pub(super) type Prepared = ControlFlow<Response<Body>, (Exchange, Request<Body>)>;

impl Proxy {
    /// The request phase (see the module documentation).
    pub(super) async fn prepare(&self, request: Request<Body>) -> Result<Prepared, BoxError> {
        let (mut parts, body) = request.into_parts();
        // Classification and authorization always run before the proxy; without their results
        // nothing is forwarded.
        let path = parts
            .extensions
            .remove::<FhirPath>()
            .ok_or("request reached the proxy unclassified")?;
        let fhir = parts
            .extensions
            .get::<Arc<FhirRequest>>()
            .cloned()
            .ok_or("request reached the proxy unclassified")?;
        let Some(Decision::Allow {
            mut obligations, ..
        }) = parts.extensions.remove::<Decision>()
        else {
            return Err("request reached the proxy unauthorised".into());
        };
        // A followed paging link: the request it continues was classified and decided again;
        // the backend gets its own link, which already holds the narrowing.
        let follow = parts.extensions.remove::<PageFollow>();
        let page_origin = match &follow {
            Some(follow) => Some(follow.origin.clone()),
            None => page_origin(&parts.method, &fhir, &path, parts.extensions.get()),
        };
        // No route takes this type under this base: not found, never the main backend by
        // another path (which would skip the rules written for the main base's paths).
        let upstream = self
            .upstream_for(&path.base, fhir.resource_type().map(|t| t.as_str()))
            .ok_or(portvagt_policy::ClassifyError::UnknownPath)?;
        // A citizen reading their own audit log sees it newest first, in the citizen's view.
        let citizen_view = obligations.citizen_view;
        let record_handle = parts.extensions.get::<RequestRecord>().cloned();
        let client_ip = parts.extensions.get::<ClientAddr>().map(|addr| addr.0.ip());

        // Request phase: narrowing, the canonical search form, the planned batch.
        let mut query = path.query;
        let mut form = path.form;
        let narrows = follow.is_none();
        if narrows && !obligations.add_params.is_empty() {
            match &mut form {
                Some(form) => *form = append_params(form, &obligations.add_params),
                None => {
                    query = Some(append_params(
                        query.as_deref().unwrap_or(""),
                        &obligations.add_params,
                    ))
                }
            }
        }
        if narrows && !obligations.add_elements.is_empty() {
            // The references that say whose data the answer is, asked for too; the response
            // phase takes them out again.
            let asked: Vec<&str> = fhir.elements().map(str::trim).collect();
            let added = &obligations.add_elements;
            match &mut form {
                Some(form) => *form = widen_elements(form, &asked, added),
                None => {
                    query = Some(widen_elements(
                        query.as_deref().unwrap_or(""),
                        &asked,
                        added,
                    ))
                }
            }
        }
        if narrows
            && citizen_view
            && fhir.interaction().returns_bundle()
            && !fhir.params().iter().any(|(name, _)| name == "_sort")
        {
            let newest_first = [("_sort".to_owned(), "-date".to_owned())];
            match &mut form {
                Some(form) => *form = append_params(form, &newest_first),
                None => query = Some(append_params(query.as_deref().unwrap_or(""), &newest_first)),
            }
        }
        // A JSON Patch that can change whose data the resource is: applied by the gateway to
        // the version it reads, and judged by its result.
        let patch = compartment_patch(&fhir);
        if obligations.verify_target
            && let Some(patient) = &obligations.compartment
        {
            // The instance itself (`Type/id`), also when an operation on it is what is sent;
            // only a write is bound to the version read.
            let instance = match (fhir.resource_type(), fhir.id()) {
                (Some(resource_type), Some(id)) => format!("{resource_type}/{id}"),
                _ => path.relative.clone(),
            };
            self.verify_target(
                &upstream,
                &instance,
                patient,
                patch,
                fhir.interaction().is_write().then_some(&mut parts.headers),
                record_handle.as_ref(),
            )
            .await?;
        }
        // No write here changes a citizen's block: checked once the target is known to be the
        // caller's to reach (another patient's is answered as missing, above).
        if self.guards_blocks
            && (fhir.interaction().is_write()
                || fhir.interaction() == Interaction::BatchOrTransaction)
        {
            self.spares_citizen_blocks(
                &upstream.backend,
                &fhir,
                &obligations.entries,
                record_handle.as_ref(),
            )
            .await?;
        }
        // Negative consent, before anything reaches the backend: the patients the request
        // touches (its reach, with identifiers resolved and the owners of what it writes).
        let principal = parts.extensions.get::<Arc<Principal>>().cloned();
        // Read only for what needs it: consent, or a backend told who acted. UTF-8 as sent (a
        // Danish reason has æ, ø, å), not only visible ASCII.
        // The relationship check binds some callers (a role the operator named).
        let bound = self.relationships.as_ref().filter(|relationships| {
            principal
                .as_ref()
                .is_some_and(|principal| relationships.binds(principal))
        });
        let wants_reason =
            self.consent.is_some() || bound.is_some() || upstream.backend.identity.is_some();
        let break_glass_reason =
            principal
                .as_ref()
                .filter(|_| wants_reason)
                .and_then(|principal| {
                    // Invisible characters alone, or too few letters, are no reason: as none
                    // at all, for the blocks, the audit record and the backend. The header's
                    // reason, else the token's; what is kept is cut to 500 characters, without
                    // control and format characters (which would reorder or hide what follow-up
                    // review reads).
                    let readable = |reason: &str| {
                        portvagt_policy::consent::break_glass_reason(reason, self.min_reason)
                    };
                    parts
                        .headers
                        .get(BREAK_GLASS_HEADER)
                        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
                        .and_then(readable)
                        .or_else(|| {
                            principal
                                .identity()
                                .break_glass_reason
                                .as_deref()
                                .and_then(readable)
                        })
                });
        let consent = (self.consent.is_some() || bound.is_some())
            .then_some(())
            .and_then(|()| {
                let principal = principal.as_ref()?;
                let reason = break_glass_reason.clone();
                let backend = self.backend_taking(&path.base, "Consent");
                Some(ConsentContext {
                    store: self.consent.clone(),
                    relationships: bound.cloned(),
                    // Who she is, not whose system she uses: a relationship grants access.
                    professional: bound
                        .is_some()
                        .then(|| Professional::new(crate::consent::person_ids(principal))),
                    backend,
                    caller: Arc::new(caller_ids(principal)),
                    purpose: principal.purpose_of_use().map(str::to_owned),
                    reason,
                    herself: principal.own_patient().map(str::to_owned),
                })
            });
        parts.headers.remove(BREAK_GLASS_HEADER);
        // The professional the mass-lookup guard counts for: whose data her requests reach must
        // be known, as for the audit trail.
        let professional = self
            .mass_lookup
            .as_ref()
            .zip(principal.as_ref())
            .and_then(|(guard, principal)| guard.professional(principal));
        let counted = self.audited || professional.is_some();
        let reach = Reach::of(&fhir);
        // Request shapes whose answer would count, hide or move what consent and the audit
        // trail must see (a count naming nobody, `_elements`, `_has` on reference data, a
        // patch that moves values): refused whatever the scopes.
        let duties = Duties {
            consent: consent.is_some(),
            audit: counted,
        };
        if let Some(reason) = shape_refusal(&fhir, &reach, duties) {
            return Err(self.deny(reason, record_handle.as_ref(), None));
        }
        // Whose data the request touches (the backend asked, where it must be) and whether their
        // blocks let it through: one phase.
        let phase = Phase::start(parts.extensions.get::<Traced>(), "portvagt.consent");
        let mut touched = if consent.is_some() || counted {
            let touched = self
                .touched(
                    &upstream,
                    &fhir,
                    &reach,
                    &obligations.entries,
                    obligations.compartment.is_some(),
                    patch,
                )
                .await?;
            if let Some(record_handle) = &record_handle {
                record_handle.fields().touched = Some(touched.patients.clone());
            }
            touched
        } else {
            Touched::default()
        };
        if let Some(consent) = &consent {
            // Batch entries a Consent refuses are answered by the gateway one by one (403 if
            // they named the patient, else 404) and never sent; a transaction is refused whole.
            for (index, reason) in self
                .check_consent(consent, &fhir, &touched, record_handle.as_ref())
                .await?
            {
                if let Some(decision) = obligations.entries.get_mut(index) {
                    *decision = Decision::Deny { reason };
                }
            }
        }
        // What the write changes names its patient by an identifier nobody can look up: whose
        // data it changes cannot be checked or recorded. (After the blocks of those it can
        // name: a caller they refuse learns no more than for any other resource of theirs.)
        if touched.owner_unplaceable {
            return Err(self.deny(DenyReason::WriteNotVerifiable, record_handle.as_ref(), None));
        }
        // A JSON Patch that can change whose data the resource is: applied to the version read,
        // now that its owners let the caller through; whoever its result adds is written (and
        // named) as by a body, checked and recorded.
        if let (Some(target), Some(document)) = (&touched.patch_target, patch) {
            let written = self
                .patched(
                    &upstream,
                    target,
                    touched.owner_version.as_deref(),
                    document,
                )
                .await?;
            if written.unplaceable {
                return Err(self.deny(
                    DenyReason::WriteNotVerifiable,
                    record_handle.as_ref(),
                    None,
                ));
            }
            let added: Vec<String> = written
                .patients
                .into_iter()
                .filter(|patient| !touched.patients.contains(patient))
                .collect();
            if !added.is_empty() {
                touched.patients.extend(added.iter().cloned());
                touched.named.extend(added.iter().cloned());
                // Past what one request may cost the audit trail: refused before their Consents
                // (and relationships) are looked up, as below for any other request.
                if self.audited && touched.patients.len() > self.audit_bound {
                    return Err(self.deny(
                        DenyReason::TooManyPatients,
                        record_handle.as_ref(),
                        None,
                    ));
                }
                if let Some(record_handle) = &record_handle {
                    record_handle.fields().touched = Some(touched.patients.clone());
                }
                if let Some(consent) = &consent {
                    let adds = Touched {
                        patients: added.clone(),
                        named: added,
                        ..Touched::default()
                    };
                    self.check_consent(consent, &fhir, &adds, record_handle.as_ref())
                        .await?;
                }
            }
        }
        phase.end(false);
        // What the request would cost the audit trail before its answer adds to it: one event
        // per patient it names or writes (at least one per batch entry). Over the bound it is
        // refused before anything is sent, so no write is ever too large to record whole.
        if self.audited {
            let events = if touched.entry_patients.is_empty() {
                touched.patients.len()
            } else {
                touched
                    .entry_patients
                    .iter()
                    .map(|patients| patients.len().max(1))
                    .sum()
            };
            let entries = match fhir.body() {
                Some(RequestBody::Bundle { entries, .. }) => entries.len(),
                _ => 0,
            };
            if events.max(entries) > self.audit_bound {
                // Named within the bound, they learn of the attempt (one event each); beyond
                // it, the refusal is one event naming nobody.
                if let Some(record_handle) = &record_handle
                    && touched.patients.len() > self.audit_bound
                {
                    record_handle.fields().touched = None;
                }
                return Err(self.deny(DenyReason::TooManyPatients, record_handle.as_ref(), None));
            }
        }
        // The patients the request names or changes count against the mass-lookup threshold
        // before anything is sent (those its answer holds, after).
        if let (Some(guard), Some(professional)) = (&self.mass_lookup, &professional) {
            let mut reached = touched.patients.clone();
            reached.extend(touched.named.iter().cloned());
            if guard.admit(professional, &reached, true).await == Admission::Refused {
                return Err(self.deny(
                    DenyReason::TooManyPatients,
                    record_handle.as_ref(),
                    Some(&reached),
                ));
            }
        }
        // The write changes the version that was read and checked, or nothing.
        if let Some(version) = &touched.owner_version
            && fhir.interaction().is_write()
        {
            super::bind_to_version(&mut parts.headers, version)?;
        }
        // A total counts what blocks withhold (a class or a resource of a named patient's, a
        // resource in two compartments): none is given while blocks are enforced, except the
        // one a count of named patients exists to answer (checked above as strictly as a
        // write: any Consent of theirs that could withhold part of it refused it).
        let strip_total = consent.is_some() && !(count_only(&fhir) && reach.pinned());
        let mut body = body;
        let mut batch = None;
        if fhir.interaction() == Interaction::BatchOrTransaction {
            let bytes = body.collect().await?.to_bytes();
            let (forwarded, plan) =
                bundle::plan(&bytes, &obligations.entries, &touched.entry_versions)?;
            if !plan.forwards_anything() {
                let answer = bundle::merge(None, &plan, self.filter_mode)?;
                if let (Some(record_handle), Some(entries)) = (
                    record_handle.as_ref(),
                    entry_records(
                        &fhir,
                        &touched.entry_patients,
                        &answer,
                        &Identified::default(),
                    ),
                ) {
                    record_handle.fields().entries = entries;
                }
                return Ok(ControlFlow::Break(fhir_json_response(
                    StatusCode::OK,
                    answer,
                )));
            }
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(forwarded.len()));
            let forwarded = bytes::Bytes::from(forwarded);
            parts.extensions.insert(ForwardedBody(forwarded.clone()));
            body = full(forwarded);
            batch = Some(plan);
        }
        if let Some(form) = form {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(form.len()));
            let form = bytes::Bytes::from(form);
            parts.extensions.insert(ForwardedBody(form.clone()));
            body = full(form);
        }
        parts.uri = match &follow {
            Some(follow) => upstream.backend.uri_below(&follow.link)?,
            None => upstream
                .backend
                .uri(&path.relative, query.as_deref().filter(|q| !q.is_empty()))?,
        };
        parts.version = Version::HTTP_11;
        let export = fhir.operation_kind() == Some(Kind::Export);
        let respond_async = export && headers::prefers_async(&parts.headers);
        headers::sanitize_request(
            &mut parts.headers,
            upstream.backend.forward_authorization,
            client_ip,
            self.public_host.as_ref(),
        );
        if export {
            headers::for_export(&mut parts.headers, respond_async, follow.is_some());
        }
        if let (Some(_), Some(principal)) = (&upstream.backend.identity, &principal) {
            let request_id = parts.extensions.get::<RequestId>();
            // A followed link sends no body; any other read body is bound by its digest.
            let body_sha256 = match &follow {
                Some(_) => None,
                None => parts
                    .extensions
                    .get::<ForwardedBody>()
                    .map(ForwardedBody::sha256),
            };
            let actor = actor_claims(
                &self.public_base_url,
                principal,
                request_id.map(RequestId::as_str),
                break_glass_reason.as_deref(),
                body_sha256.as_deref(),
            );
            parts.extensions.insert(actor);
        }
        let is_head = parts.method == Method::HEAD;
        if is_head && (response_check(&obligations).is_some() || consent.is_some() || counted) {
            // A HEAD answer has no body to check: fetch it with GET, check it (compartment,
            // consent), and let the HTTP layer leave the body out. Otherwise HEAD would tell
            // whose resource exists and when it changed.
            parts.method = Method::GET;
        }
        let outgoing = Request::from_parts(parts, body);
        let exchange = Exchange {
            fhir,
            obligations,
            upstream,
            citizen_view,
            record_handle,
            consent,
            touched,
            strip_total,
            batch,
            is_head,
            page_origin,
            followed: follow.as_ref().map(|follow| follow.kind),
            professional,
        };
        Ok(ControlFlow::Continue((exchange, outgoing)))
    }
}

/// Who acts, for a backend that takes the identity assertion (signed per attempt by the
/// backend client).
pub(super) fn actor_claims(
    issuer: &Arc<str>,
    principal: &Principal,
    request_id: Option<&str>,
    break_glass_reason: Option<&str>,
    body_sha256: Option<&str>,
) -> ActorClaims {
    let identity = principal.identity();
    let organisation = identity
        .organisation
        .as_ref()
        .map(|organisation| (organisation.system(), organisation));
    let peer = principal.peer();
    let actor = Actor {
        subject: principal.subject(),
        token_issuer: principal.issuer(),
        name: identity.name.as_deref(),
        roles: principal.roles(),
        authorization_id: identity.authorization_id.as_deref(),
        organisation: organisation.as_ref().map(|(system, organisation)| {
            (
                system.as_str(),
                organisation.id.as_str(),
                organisation.name.as_deref(),
            )
        }),
        certificate_cvr: peer.cvr(),
        client_id: principal.client_id(),
        certificate_thumbprint: Some(peer.thumbprint_sha256()).filter(|t| !t.is_empty()),
        purpose_of_use: principal.purpose_of_use(),
        patient: principal.patient(),
        fhir_user: principal.fhir_user(),
        on_behalf_of: identity.on_behalf_of.as_deref(),
        body_sha256,
        // Only an emergency sets a block aside; a reason given otherwise says nothing.
        break_glass_reason: break_glass_reason
            .filter(|_| principal.purpose_of_use() == Some("EMERGENCY")),
        request_id,
    };
    ActorClaims::new(issuer.clone(), &actor)
}

/// The request the paging links of this request's answer continue: a search, history or
/// operation read with `GET` (or `HEAD`), or a `POST _search` (its canonical form), as the
/// client made it, for the caller who made it. Other requests' links are not signed.
fn page_origin(
    method: &Method,
    fhir: &FhirRequest,
    path: &FhirPath,
    principal: Option<&Arc<Principal>>,
) -> Option<PageOrigin> {
    let interaction = fhir.interaction();
    if !interaction.returns_bundle() || interaction == Interaction::BatchOrTransaction {
        return None;
    }
    let post_search = path.form.is_some();
    if !(post_search || method == Method::GET || method == Method::HEAD) {
        return None;
    }
    Some(PageOrigin {
        base: path.base.clone(),
        post_search,
        relative: path.relative.clone(),
        query: if post_search {
            path.form.clone()
        } else {
            path.query.clone()
        },
        holder: principal?.fingerprint(),
    })
}
