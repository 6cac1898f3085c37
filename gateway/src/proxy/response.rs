//! The exchange with the backend and the response phase: the backend's answer is timed and
//! recorded, a 5xx becomes the gateway's own words, and an answer to be checked is read whole:
//! its headers cleaned and URLs rewritten, checked against the compartment and a granular
//! scope, a batch merged with the entries the gateway answered, citizens' blocks applied to
//! what it holds (withheld entry by entry, or refused), totals and last links dropped where
//! they would tell, the citizen's view of an audit log, and whose data left recorded.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use portvagt_policy::compartment::{Identified, identifiers_in_answer, patients_in_body};
use portvagt_policy::consent::{Refusals, answers_not_found, not_found_alike, withhold};
use portvagt_policy::operations::Kind;
use portvagt_policy::request::RequestBody;
use portvagt_policy::{
    DenyReason, FhirRequest, FilterMode, Filtered, Interaction, Obligations, check_response,
};

use super::bundle::BatchPlan;
use super::consent::{Placed, overlaps};
use super::export;
use super::request::Exchange;
use super::{PageSigning, Proxy, bundle, entry_records, headers, response_check, rewrite_bundle};
use crate::backend::ProxyError;
use crate::backend::rewrite::UrlRewriter;
use crate::body::{Body, BoxError, boxed, full};
use crate::consent::{consent_refusal, not_found_outcome};
use crate::mass_lookup::Admission;
use crate::metrics::status_class;
use crate::paging::LinkKind;

impl Proxy {
    /// Sends the request to the routed backend: timed, recorded, and a 5xx (or, under
    /// citizens' blocks, a 404 or 410) answered in the gateway's words.
    pub(super) async fn send(
        &self,
        exchange: &Exchange,
        outgoing: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, BoxError> {
        let Exchange {
            fhir,
            upstream,
            record_handle,
            consent,
            obligations,
            ..
        } = exchange;

        let started = Instant::now();
        let result = upstream.backend.send(outgoing, &self.metrics).await;
        let upstream_latency = started.elapsed();
        let response = result?;
        let status = response.status();
        self.metrics
            .upstream_duration
            .with_label_values(&[upstream.backend.name(), status_class(status.as_u16())])
            .observe(upstream_latency.as_secs_f64());
        if let Some(record_handle) = &record_handle {
            let mut fields = record_handle.fields();
            fields.upstream_latency = Some(upstream_latency);
            fields.upstream_status = Some(status.as_u16());
        }
        // Under citizens' blocks, and under a patient's compartment, a missing resource is
        // answered in the gateway's words, the same as one withheld or another patient's: the
        // backend's own 404 might differ from it, and a 410 would say that it existed.
        if (consent.is_some() || obligations.compartment.is_some())
            && (status == StatusCode::NOT_FOUND || status == StatusCode::GONE)
            && answers_not_found(fhir.acts_as())
        {
            return Err(crate::consent::NotFoundError.into());
        }
        if status.is_server_error() {
            tracing::warn!(
                upstream_status = status.as_u16(),
                "backend answered with a server error"
            );
            return Err(ProxyError::BackendStatus(status).into());
        }

        Ok(response)
    }

    /// The response phase (see the module documentation), in its steps: headers cleaned; an
    /// answer nothing has to look at streams through; else it is read whole, checked
    /// ([`checked_answer`]), merged with a batch's refused entries ([`merged_batch`]), stripped
    /// of counts that would tell ([`counts_hidden`]), withheld from under citizens' blocks, and
    /// whose data it holds recorded.
    pub(super) async fn respond(
        &self,
        exchange: Exchange,
        response: Response<hyper::body::Incoming>,
    ) -> Result<Response<Body>, BoxError> {
        let status = response.status();
        let (mut parts, body) = response.into_parts();
        let paging = exchange.page_origin.as_ref().map(|origin| PageSigning {
            pager: &self.pager,
            origin,
            followed: exchange.followed,
        });
        // Bulk Data: the status, manifest and files reach only the client that asked for them.
        let export = exchange.fhir.operation_kind() == Some(Kind::Export);
        if export {
            let kick_off = paging
                .as_ref()
                .filter(|_| exchange.followed.is_none() && status == StatusCode::ACCEPTED);
            export::only_signed_locations(
                &mut parts.headers,
                &exchange.upstream.rewriter,
                kick_off,
            );
        }
        clean_headers(&mut parts.headers, &exchange.upstream.rewriter, export);
        // An export's progress is the backend's free text: under citizens' blocks it may count
        // what they withhold, as a manifest's `count` would.
        if export && exchange.consent.is_some() {
            parts.headers.remove("x-progress");
        }
        // An export file is read as the FHIR resources it holds, whatever its answer calls it:
        // its resources are checked, withheld and audited like a Bundle's entries.
        let file = export && exchange.followed == Some(LinkKind::ExportFile);
        let duties = Duties::of(
            &exchange,
            status,
            file || is_json(&parts.headers),
            &parts.headers,
            self.audited,
        );
        // The gateway asks for FHIR JSON. An answer with a body in anything else cannot be
        // shown to be anybody's in particular: read as FHIR JSON it might name patients,
        // passed as bytes it would leave unaudited and unchecked, its links unsigned. So a read
        // is refused, whatever else applies; only a Binary's document (a PDF, say: a type that
        // names neither JSON nor XML), from a server that answers a Binary read with its
        // bytes, passes as what it says it is (and is still refused below while data is
        // withheld). A body that does not say what it is, is no document either. What a write
        // changed has happened, so its answer is not refused: it leaves without such a body.
        // A HEAD sent on as a GET (to check what it would show) is read like one; a HEAD's own
        // answer has no body.
        let declared_document = || {
            matches!(
                exchange.fhir.interaction(),
                Interaction::Read | Interaction::Vread
            ) && exchange
                .fhir
                .resource_type()
                .is_some_and(|t| t.as_str() == "Binary")
                && names_a_document(&parts.headers)
        };
        if status.is_success()
            && !duties.is_json
            && !export
            && hyper::body::Body::size_hint(&body).exact() != Some(0)
            && !declared_document()
        {
            if !exchange.fhir.interaction().is_write() {
                return Err(ProxyError::UnreadableAnswer.into());
            }
            without_body_description(&mut parts.headers);
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }
        // While data is withheld (citizens' blocks, the treatment relationship), an answer to a
        // read that is not FHIR JSON (a document's raw bytes, say) cannot be shown to be
        // nobody's the caller may not see: refused (503), never passed on unread.
        if duties.consent
            && status.is_success()
            && !duties.is_json
            && !export
            && !exchange.fhir.interaction().is_write()
            && parts.headers.contains_key(header::CONTENT_TYPE)
        {
            return Err(crate::consent::ConsentUnavailableError.into());
        }
        // An answer that is no success says why in an OperationOutcome, and nothing else: its
        // body is never checked, withheld from or audited (a redirect's page, an export file
        // answered 300, a resource beside a 409 would leave unread), so anything else in it is
        // told in the gateway's words, with the backend's status.
        if !status.is_success() {
            return self.only_an_outcome(&exchange, parts, body).await;
        }
        // An export's manifest and files are always read: their URLs and resources must be seen.
        if duties.streams_through() && !export {
            return Ok(Response::from_parts(parts, boxed(body)));
        }
        let Exchange {
            fhir,
            obligations,
            upstream,
            record_handle,
            consent,
            touched,
            strip_total,
            batch,
            ..
        } = &exchange;
        // An export file's resources are checked, withheld and audited as a Bundle's entries,
        // whatever its answer says it is: a file is never let through unread.
        let bytes = match crate::backend::read_limited(body, self.max_response_bytes).await {
            Err(ProxyError::ResponseTooLarge) if file => {
                return Err(ProxyError::ExportFileTooLarge.into());
            }
            read => read?,
        };
        let ndjson = file && status.is_success();
        let exported_type = export
            .then(|| portvagt_policy::operations::export_type(fhir.params()))
            .flatten();
        let exported_type = exported_type.as_ref().map(|t| t.as_str());
        let exported = |resource_type: &str| export::exported(exported_type, resource_type);
        // Whose data a searchset holds is read in the scan that rewrites its URLs, and kept
        // with the bytes it was read in: whatever changes them after that (a filter, a merge)
        // makes it read again from the bytes that leave.
        let (mut bytes, found) = if ndjson {
            (
                export::ndjson_as_bundle(
                    &bytes,
                    &exported,
                    &upstream.rewriter,
                    withholds(&exchange),
                )?,
                None,
            )
        } else {
            rewrite_bundle(upstream, bytes, paging, status, duties.audits_patients)?
        };
        let mut found = found.map(|patients| Found {
            read_in: bytes.clone(),
            patients,
        });
        // Every successful export answer but a file is a manifest, a resource or nothing: a
        // manifest is rebuilt with signed links, and one that cannot be signed does not leave.
        if export && exchange.followed != Some(LinkKind::ExportFile) && status.is_success() {
            bytes = match &paging {
                Some(signing) => export::signed_manifest(
                    bytes,
                    &upstream.rewriter,
                    signing,
                    &exported,
                    export::Withholding {
                        counts: consent.is_some(),
                        anything: withholds(&exchange),
                    },
                )?,
                None if bytes.iter().all(u8::is_ascii_whitespace) => bytes,
                None => return Err(ProxyError::UnreadableAnswer.into()),
            };
        }
        // What the backend says of itself leaves in the gateway's words, or not at all.
        if duties.describes_security && !bytes.iter().all(u8::is_ascii_whitespace) {
            bytes = self
                .smart
                .rewrite_capability_statement(&bytes, &upstream.rewriter)
                .map(Bytes::from)
                .ok_or(ProxyError::UnreadableAnswer)?;
        }
        if status.is_success() {
            let answered = bytes.clone();
            bytes = match checked_answer(bytes, obligations, duties.is_json, self.filter_mode) {
                Ok(bytes) => bytes,
                // Another patient's resource asked for by id is answered as a missing one:
                // whether it exists is not the caller's to learn (the refusal is recorded). An
                // answer that cannot be read at all stays a refusal.
                Err(DenyReason::OutsideCompartment)
                    if answers_not_found(fhir.acts_as())
                        && !fhir.interaction().is_write()
                        && duties.is_json
                        && serde_json::from_slice::<serde::de::IgnoredAny>(&answered).is_ok() =>
                {
                    return Err(self.refused_as_missing(record_handle.as_ref()));
                }
                Err(reason) => return Err(self.deny(reason, record_handle.as_ref(), None)),
            };
            // The history of another patient's resource, all taken out, is answered as the
            // history of one that never existed.
            if obligations.compartment.is_some()
                && fhir.interaction() == Interaction::HistoryInstance
                && serde_json::from_slice::<serde_json::Value>(&bytes)
                    .is_ok_and(|answer| has_no_entries(&answer))
            {
                return Err(self.refused_as_missing(record_handle.as_ref()));
            }
            if let Some(plan) = batch {
                bytes = merged_batch(&bytes, plan, fhir, consent.is_some(), self.filter_mode)?;
            }
            // A total that counts what a check or a block takes out goes, and with it the
            // `last` link, whose offset counts the same.
            let counted = bytes.clone();
            bytes = counts_hidden(
                bytes,
                fhir,
                *strip_total || obligations.hide_total,
                consent.is_some() || obligations.hide_total,
            )?;
            found = found.map(|found| found.carried(&counted, &bytes));
        }
        let Withheld {
            bytes,
            patients: audited_patients,
            identified,
        } = self
            .withhold(bytes, duties.audits_patients, &exchange, found)
            .await?;
        // Every check has read the references the gateway added to `_elements`: out again.
        let bytes = if status.is_success() && !obligations.add_elements.is_empty() {
            elements_trimmed(bytes, fhir, &obligations.add_elements)
        } else {
            bytes
        };
        // Whose data leaves counts against the mass-lookup threshold: past it, nothing leaves.
        // What a write changed has happened: its answer is counted, never refused. In a batch
        // or transaction that is the write entries' answers: the read entries' are withheld
        // like a single read's would be.
        let is_write = fhir.interaction().is_write();
        let mut bytes = bytes;
        let mut audited_patients = audited_patients;
        let mut entries = if batch.is_some() && status.is_success() {
            entry_records(fhir, &touched.entry_patients, &bytes, &identified)
        } else {
            None
        };
        // Writes that happened (a refused one changed nothing, and carries nothing past).
        let batch_writes = entries
            .as_ref()
            .is_some_and(|entries| entries.iter().any(wrote));
        // One AuditEvent per patient (per entry, in a batch): an answer about more than the
        // bound would cost the spool more than any one request may. Refused, and recorded as
        // one event.
        let events = match &entries {
            Some(entries) => entries
                .iter()
                .filter(|e| !wrote(e))
                .map(|e| e.patients.len())
                .sum(),
            // The record names those the request named and those its answer holds (counted
            // once each only when together they could pass the bound).
            None => audited_patients.as_ref().map_or(0, |answered| {
                let at_most = answered.len() + touched.patients.len();
                if at_most <= self.audit_bound {
                    return at_most;
                }
                let mut all: Vec<&String> = answered.iter().chain(&touched.patients).collect();
                all.sort_unstable();
                all.dedup();
                all.len()
            }),
        };
        // An export's file is the way to many patients at once: recorded whole, not bounded.
        let mut over = !is_write && !file && events > self.audit_bound;
        // The mass-lookup guard: what was read counts and may be refused; what was written
        // counts, never refused.
        if let (Some(guard), Some(professional)) = (&self.mass_lookup, &exchange.professional) {
            match &entries {
                Some(records) if batch_writes => {
                    let (written, read) = patients_by_kind(records);
                    guard.admit(professional, &written, false).await;
                    over |=
                        !over && guard.admit(professional, &read, true).await == Admission::Refused;
                }
                _ => {
                    if let Some(patients) = audited_patients.as_ref()
                        && !over
                        && guard.admit(professional, patients, !is_write).await
                            == Admission::Refused
                    {
                        return Err(self.deny(
                            DenyReason::TooManyPatients,
                            record_handle.as_ref(),
                            Some(patients),
                        ));
                    }
                }
            }
        }
        if over {
            if batch_writes {
                // The writes stand; every read entry's answer is withheld.
                bytes = reads_withheld(&bytes, fhir)?;
                crate::layers::authorize::count_refusal(&self.metrics, DenyReason::TooManyPatients);
                entries = entry_records(fhir, &touched.entry_patients, &bytes, &identified);
                audited_patients = Some(identified.patients_of(&serde_json::from_slice(&bytes)?));
            } else {
                if let Some(record_handle) = &record_handle {
                    record_handle.fields().patients.clear();
                }
                return Err(self.deny(DenyReason::TooManyPatients, record_handle.as_ref(), None));
            }
        }
        // What leaves is what is audited: after filtering, merging and withholding.
        if let (Some(patients), Some(record_handle)) = (audited_patients, &record_handle) {
            record_handle.fields().patients = patients;
        }
        if let (Some(entries), Some(record_handle)) = (entries, &record_handle) {
            record_handle.fields().entries = entries;
        }
        let bytes = if ndjson {
            export::bundle_as_ndjson(&bytes)?
        } else {
            bytes
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        // No body (a write's answer that could not be read leaves without one): nothing to say
        // of its type.
        if bytes.is_empty() {
            without_body_description(&mut parts.headers);
        }
        Ok(Response::from_parts(parts, full(bytes)))
    }
    /// Citizens' blocks applied to what an answer holds, and whose data it holds (for the audit
    /// record): the patients read from the bytes when that is all that is needed; else the
    /// answer parsed, entries a block withholds taken out (or, asked for by the patient's name,
    /// the whole answer refused), and the citizen's view of an audit log made. Returns the
    /// answer as it leaves, and its patients.
    async fn withhold(
        &self,
        mut bytes: Bytes,
        audits_patients: bool,
        exchange: &Exchange,
        found: Option<Found>,
    ) -> Result<Withheld, BoxError> {
        let Exchange {
            fhir,
            citizen_view,
            record_handle,
            consent,
            touched,
            ..
        } = exchange;
        let (consent, record_handle, citizen_view) =
            (consent.as_ref(), record_handle.as_ref(), *citizen_view);
        // The patients (for the audit record, and the consent check) read from the bytes, no
        // tree built: unless the citizen view rewrites the answer, or a Consent may withhold
        // part of it, that is all that is needed.
        let from_bytes = if audits_patients && !citizen_view && !bytes.is_empty() {
            found
                .filter(|found| same_bytes(&found.read_in, &bytes))
                .map_or_else(|| patients_in_body(&bytes), |found| found.patients)
        } else {
            None
        };
        let decided = match from_bytes {
            Some(patients) => {
                let blocks = self
                    .answer_blocks(consent, &patients, Placed::default(), record_handle)
                    .await?;
                Some((patients, blocks))
            }
            None => None,
        };
        let needs_tree = match &decided {
            Some((_, blocks)) => blocks.is_some(),
            None => audits_patients && !bytes.is_empty(),
        };
        let parsed = if needs_tree {
            // Read as strictly as it leaves: a member given twice (a client may keep the one
            // not checked) is an answer that cannot be read.
            match portvagt_policy::strict_json::tree_unique(&bytes) {
                Ok(answer) => Some(answer),
                // What cannot be read cannot be checked against consents: refused.
                Err(_) if consent.is_some() => {
                    return Err(crate::consent::ConsentUnavailableError.into());
                }
                // A write's answer is not refused: the change has happened, and the record
                // names whose data it changed from the request. But what cannot be read is not
                // passed on: it leaves without its body.
                Err(_) if fhir.interaction().is_write() => {
                    bytes = Bytes::new();
                    None
                }
                // Nor can whose data a read answered be recorded: it does not leave unrecorded.
                Err(_) => return Err(ProxyError::UnreadableAnswer.into()),
            }
        } else {
            None
        };
        let mut identified = Identified::default();
        let audited_patients = match (parsed, decided) {
            (Some(mut answer), decided) => {
                let (mut patients, blocks) = match decided {
                    Some(decided) => decided,
                    None => {
                        // Patients named by identifier only are looked up: whose data the
                        // answer holds is theirs as much as by id.
                        let by_identifier = identifiers_in_answer(&answer);
                        if !by_identifier.tokens.is_empty() {
                            match self
                                .identified(&exchange.upstream, &by_identifier.tokens)
                                .await
                            {
                                Ok(found) => identified = found,
                                // A write's answer is what it wrote, to the version read or
                                // as created: the change has happened, its patients were
                                // checked and are recorded from the request. (Not a
                                // conditional write's, whose answer may be another resource.)
                                Err(error) if wrote_what_was_checked(fhir, touched) => {
                                    tracing::warn!(
                                        %error,
                                        "the identifiers in a write's answer could not be looked up"
                                    );
                                }
                                Err(error) => return Err(error),
                            }
                        }
                        let patients = identified.patients_of(&answer);
                        let placed = Placed {
                            identified: identified.clone(),
                            unplaceable: by_identifier.unplaceable,
                        };
                        let blocks = self
                            .answer_blocks(consent, &patients, placed, record_handle)
                            .await?;
                        (patients, blocks)
                    }
                };
                if let (Some(_), Some(blocks)) = (consent, &blocks) {
                    // A searchset, history or batch answer is withheld from entry by entry; a
                    // stored Bundle that was read (a document) is one resource, withheld whole.
                    let is_bundle = fhir.interaction().returns_bundle()
                        && answer.get("resourceType").and_then(|t| t.as_str()) == Some("Bundle");
                    if !is_bundle {
                        // Asked for by the patient's name: refused, and break-the-glass can
                        // follow. Asked for by another name: as if it did not exist.
                        if blocks.withholds(&answer) {
                            return Err(if overlaps(&blocks.patients, &touched.named) {
                                self.answer_denial(blocks, record_handle)
                            } else {
                                self.withheld(&blocks.patients, record_handle)
                            });
                        }
                    } else {
                        let withheld = withhold(
                            &mut answer,
                            &|r| blocks.withholds(r),
                            &Refusals {
                                forbidden: &consent_refusal(),
                                not_found: &not_found_outcome(),
                                named: &touched.entry_named,
                                identified: blocks.identified(),
                            },
                        );
                        let emptied = has_no_entries(&answer);
                        if withheld > 0
                            && emptied
                            && fhir.interaction() == Interaction::HistoryInstance
                            && !overlaps(&blocks.patients, &touched.named)
                        {
                            // The history of a resource that is all withheld: as if it never
                            // existed.
                            return Err(self.withheld(&blocks.patients, record_handle));
                        }
                        if withheld > 0 {
                            self.metrics.consent_withheld.inc_by(withheld as u64);
                            bytes = Bytes::from(serde_json::to_vec(&answer)?);
                            patients = identified.patients_of(&answer);
                        }
                    }
                }
                if citizen_view {
                    crate::audit::citizen::citizen_view(&mut answer);
                    bytes = Bytes::from(serde_json::to_vec(&answer)?);
                }
                Some(patients)
            }
            (None, Some((patients, _))) => Some(patients),
            (None, None) => None,
        };
        Ok(Withheld {
            bytes,
            patients: audited_patients,
            identified,
        })
    }
}

/// Whether a write's answer is the resource it wrote as checked: a write by id bound to the
/// version read, or a create without `If-None-Exist` (which may answer an existing resource).
fn wrote_what_was_checked(fhir: &FhirRequest, touched: &super::consent::Touched) -> bool {
    match fhir.interaction() {
        Interaction::Create => fhir.if_none_exist().is_none(),
        interaction => interaction.is_write() && touched.owner_version.is_some(),
    }
}

/// An answer as it leaves, after citizens' blocks.
struct Withheld {
    bytes: Bytes,
    /// Whose data it holds, when that must be known.
    patients: Option<Vec<String>>,
    /// The patients found for the identifiers its references by identifier only use.
    identified: Identified,
}

/// The most of an answer that is no success the gateway reads: an OperationOutcome is small.
const MAX_OUTCOME_BYTES: usize = 1024 * 1024;

impl Proxy {
    /// An answer that is no success (3xx, 4xx), passed on only with no body or an
    /// OperationOutcome read as strictly as every check reads, and then rebuilt of its issues'
    /// severity, code and details (their coded words and text): nothing else of the backend's
    /// (a `contained` resource, narrative, extensions) leaves, the backend's base in them is
    /// the gateway's, and while data is withheld (citizens' blocks, a compartment, a granular
    /// scope) neither do its `diagnostics` and `expression`, which may name a resource the
    /// caller may not learn of ("first reference found was Observation/5"). Anything else is
    /// [`ProxyError::NotAnOutcome`].
    async fn only_an_outcome(
        &self,
        exchange: &Exchange,
        mut parts: http::response::Parts,
        body: hyper::body::Incoming,
    ) -> Result<Response<Body>, BoxError> {
        let status = parts.status;
        if !(status.is_redirection() || status.is_client_error()) {
            return Err(ProxyError::NotAnOutcome(StatusCode::BAD_GATEWAY).into());
        }
        let bytes = match crate::backend::read_limited(body, MAX_OUTCOME_BYTES).await {
            Ok(bytes) => bytes,
            Err(ProxyError::ResponseTooLarge) => {
                return Err(ProxyError::NotAnOutcome(status).into());
            }
            Err(error) => return Err(error.into()),
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Response::from_parts(parts, full(bytes)));
        }
        let rewriter = &exchange.upstream.rewriter;
        let rebuilt = crate::strict_json::tree_unique(&bytes)
            .ok()
            .and_then(|answer| {
                crate::outcome::backend_outcome_rebuilt(
                    &answer,
                    withholds(exchange),
                    rewriter.backend_base(),
                    rewriter.public_base(),
                )
            })
            .ok_or(ProxyError::NotAnOutcome(status))?;
        without_body_description(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::outcome::FHIR_JSON),
        );
        Ok(Response::from_parts(parts, full(rebuilt)))
    }
}

/// The backend's words for a body that does not leave as it came (its type, encoding and file
/// name) taken out.
fn without_body_description(headers: &mut HeaderMap) {
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_DISPOSITION,
    ] {
        headers.remove(name);
    }
}

/// Whether anything of what the backend holds is withheld from this caller (citizens' blocks
/// or the treatment relationship, a compartment, a granular scope, the audit log, counts), in
/// the request or any entry of a batch: then an outcome does not say more than its codes.
fn withholds(exchange: &Exchange) -> bool {
    let withholds = |obligations: &Obligations| {
        obligations.compartment.is_some()
            || !obligations.restriction.is_empty()
            || obligations.withhold_audit_events
            || obligations.hide_total
    };
    exchange.consent.is_some() || exchange.batch.is_some() || withholds(&exchange.obligations)
}

/// The backend's headers as the client may see them ([`headers::sanitize_response`]), and its
/// `Location` and `Content-Location` pointing at the gateway: below the backend's base they
/// are rewritten, a relative one stays, and any other (another host, the backend spelled
/// another way, a second value) goes. An export's were already made signed gateway links
/// ([`export::only_signed_locations`]) and stay as they are.
fn clean_headers(headers: &mut HeaderMap, rewriter: &UrlRewriter, export: bool) {
    headers::sanitize_response(headers);
    if export {
        return;
    }
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let kept = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|location| match rewriter.rewrite(location) {
                Some(rewritten) => HeaderValue::try_from(rewritten).ok(),
                None if headers::is_relative_location(location) => {
                    HeaderValue::try_from(location).ok()
                }
                None => None,
            });
        headers.remove(&name);
        if let Some(value) = kept {
            headers.insert(name, value);
        }
    }
}

/// Whether the answer says it is FHIR JSON: its media type's essence, in any case
/// (`Application/FHIR+JSON` is JSON; `application/json-patch+json` is not).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::format::is_json)
}

/// What the response phase must do with one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Duties {
    is_json: bool,
    is_head: bool,
    /// Checked against the compartment or a granular scope, or merged into a batch answer.
    must_check: bool,
    /// A searchset or history whose URLs point at the backend.
    rewrites_urls: bool,
    /// The CapabilityStatement, which describes the gateway's security, not the backend's.
    describes_security: bool,
    /// Whose data it holds must be known (audit, consent, the citizen's view, the mass-lookup
    /// guard).
    audits_patients: bool,
    /// Citizens' blocks are enforced.
    consent: bool,
}

impl Duties {
    fn of(
        exchange: &Exchange,
        status: StatusCode,
        is_json: bool,
        headers: &HeaderMap,
        audited: bool,
    ) -> Self {
        let interaction = exchange.fhir.interaction();
        let consent = exchange.consent.is_some();
        Duties {
            is_json,
            is_head: exchange.is_head,
            must_check: (response_check(&exchange.obligations).is_some()
                && !raw_passes(&exchange.obligations, is_json, headers))
                || exchange.batch.is_some()
                || !exchange.obligations.add_elements.is_empty(),
            rewrites_urls: interaction.returns_bundle() && is_json,
            describes_security: interaction == Interaction::Capabilities
                && is_json
                && status.is_success(),
            audits_patients: (audited
                || consent
                || exchange.citizen_view
                || exchange.professional.is_some())
                && is_json
                && status.is_success(),
            consent,
        }
    }

    /// Nothing has to look at the answer: its body streams through as the backend sends it
    /// (a HEAD answer has none, unless a block may apply to what the GET behind it read).
    fn streams_through(&self) -> bool {
        !self.must_check
            && !self.describes_security
            && !self.audits_patients
            && ((self.is_head && !self.consent) || (!self.is_head && !self.rewrites_urls))
    }
}

/// Whether an answer that is not JSON passes unread: only AuditEvents are to be withheld (no
/// compartment, no granular scope), and what came says it is a document's bytes (a PDF, an
/// image), not FHIR in another form: a type naming JSON (NDJSON, a `+json` of any kind) or XML
/// in any case is read and refused, as is one that is missing or unreadable.
fn raw_passes(obligations: &Obligations, is_json: bool, headers: &HeaderMap) -> bool {
    obligations.withhold_audit_events
        && obligations.compartment.is_none()
        && obligations.restriction.is_empty()
        && !is_json
        && names_a_document(headers)
}

/// Whether the answer's type says it is a document's bytes: readable, and naming neither JSON
/// (NDJSON, a `+json` of any kind) nor XML, in any case.
fn names_a_document(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .is_some_and(|v| !v.trim().is_empty() && !v.contains("xml") && !v.contains("json"))
}

/// A successful answer checked against the compartment or a granular scope: unchanged,
/// filtered (entries outside taken out), or refused with the reason. Fail closed: what cannot
/// be read as FHIR JSON cannot be shown to be the patient's.
fn checked_answer(
    bytes: Bytes,
    obligations: &Obligations,
    is_json: bool,
    mode: FilterMode,
) -> Result<Bytes, DenyReason> {
    let Some(check) = response_check(obligations) else {
        return Ok(bytes);
    };
    if bytes.is_empty() {
        return Ok(bytes);
    }
    let verdict = if is_json {
        check_response(&bytes, &check, mode)
    } else {
        Filtered::Forbidden
    };
    match verdict {
        Filtered::Unchanged => Ok(bytes),
        Filtered::Rewritten(filtered) => Ok(Bytes::from(filtered)),
        Filtered::Forbidden => Err(super::refusal_reason(obligations)),
    }
}

/// A successful batch answer merged with the entries the gateway answered itself; under
/// citizens' blocks, an entry the backend did not find is answered in the gateway's words, as
/// a single request is.
fn merged_batch(
    bytes: &[u8],
    plan: &BatchPlan,
    fhir: &FhirRequest,
    consent: bool,
    mode: FilterMode,
) -> Result<Bytes, BoxError> {
    let merged = bundle::merge(Some(bytes), plan, mode)?;
    let Some(RequestBody::Bundle { entries, .. }) = fhir.body() else {
        return Ok(Bytes::from(merged));
    };
    // Under a patient's compartment, an entry asking for a resource by id is answered as a
    // single request is: another patient's, a missing one and a deleted one alike.
    let compartment: Vec<bool> = entries
        .iter()
        .zip(plan.under_compartment())
        .map(|(entry, under)| {
            under && answers_not_found(entry.acts_as()) && !entry.interaction().is_write()
        })
        .collect();
    let applies: Vec<bool> = entries
        .iter()
        .zip(&compartment)
        .map(|(entry, by_id)| *by_id || (consent && answers_not_found(entry.acts_as())))
        .collect();
    if !applies.contains(&true) {
        return Ok(Bytes::from(merged));
    }
    let Ok(mut answer) = serde_json::from_slice::<serde_json::Value>(&merged) else {
        return Ok(Bytes::from(merged));
    };
    let not_found = not_found_outcome();
    let mut changed = false;
    if let Some(answered) = answer
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
    {
        for ((entry, request), by_id) in answered.iter_mut().zip(entries).zip(&compartment) {
            if !by_id {
                continue;
            }
            let refused = entry
                .pointer("/response/outcome/issue/0/details/coding/0/code")
                .and_then(serde_json::Value::as_str)
                == Some(DenyReason::OutsideCompartment.code());
            // A history all taken out is the history of nothing.
            let emptied_history = request.interaction() == Interaction::HistoryInstance
                && entry.get("resource").is_some_and(has_no_entries);
            if refused || emptied_history {
                *entry = bundle::outcome_entry(&crate::outcome::not_found());
                changed = true;
            }
        }
    }
    changed |= not_found_alike(&mut answer, &applies, &not_found);
    if changed {
        return Ok(Bytes::from(serde_json::to_vec(&answer)?));
    }
    Ok(Bytes::from(merged))
}

/// The answer without the `added` elements, in every resource of the requested type (the
/// resource read, or the entries of a searchset): the client asked for an answer without them.
fn elements_trimmed(bytes: Bytes, fhir: &FhirRequest, added: &[String]) -> Bytes {
    let Some(resource_type) = fhir.resource_type() else {
        return bytes;
    };
    // As strictly as it was checked: a tree built by serde_json alone could read other JSON.
    let Ok(mut answer) = crate::strict_json::tree_unique(&bytes) else {
        return bytes;
    };
    let trim = |resource: &mut serde_json::Value| {
        if resource.get("resourceType").and_then(|t| t.as_str()) == Some(resource_type.as_str())
            && let Some(fields) = resource.as_object_mut()
        {
            for element in added {
                fields.shift_remove(element.as_str());
            }
        }
    };
    if fhir.interaction().returns_bundle() {
        for entry in answer
            .get_mut("entry")
            .and_then(|e| e.as_array_mut())
            .into_iter()
            .flatten()
        {
            if let Some(resource) = entry.get_mut("resource") {
                trim(resource);
            }
        }
    } else {
        trim(&mut answer);
    }
    serde_json::to_vec(&answer).map_or(bytes, Bytes::from)
}

/// Whether a Bundle (a history, say) has no entries left.
fn has_no_entries(bundle: &serde_json::Value) -> bool {
    bundle
        .get("entry")
        .and_then(serde_json::Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// Whose data an answer's entries hold, read in the scan that rewrote them
/// ([`rewrite_bundle`]), with the bytes it was read in: it holds for those very bytes only.
struct Found {
    read_in: Bytes,
    /// `None`: it takes more than the bytes (read the tree).
    patients: Option<Vec<String>>,
}

impl Found {
    /// Kept for `to`, which [`counts_hidden`] made of `from`: it takes out counts only (a
    /// `total`, a `last` link), never a reference, so whose data the entries hold is what it
    /// was. Read in other bytes than `from`, it stays with those (and holds for nothing that
    /// leaves).
    fn carried(self, from: &Bytes, to: &Bytes) -> Found {
        if same_bytes(&self.read_in, from) {
            Found {
                read_in: to.clone(),
                patients: self.patients,
            }
        } else {
            self
        }
    }
}

/// Whether two are the same view of the same buffer (so the same bytes: a buffer held cannot be
/// reused for others).
fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// A searchset or history without the numbers that would count what checks or blocks take out:
/// the `total` when `strip_total`, the `last` link (its offset counts them too) when
/// `strip_last`. An answer that cannot be read to take them out is refused: nothing shows them
/// gone.
fn counts_hidden(
    mut bytes: Bytes,
    fhir: &FhirRequest,
    strip_total: bool,
    strip_last: bool,
) -> Result<Bytes, ProxyError> {
    if !fhir.interaction().returns_bundle() || bytes.is_empty() {
        return Ok(bytes);
    }
    let unreadable = |_| ProxyError::UnreadableAnswer;
    if strip_total
        && let Some(without) = portvagt_policy::filter::without_total(&bytes).map_err(unreadable)?
    {
        bytes = Bytes::from(without);
    }
    if strip_last
        && let Some(without) =
            portvagt_policy::filter::without_last_link(&bytes).map_err(unreadable)?
    {
        bytes = Bytes::from(without);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;

/// Whether a batch entry is a write that happened.
fn wrote(entry: &crate::context::EntryRecord) -> bool {
    entry.request.interaction().is_write() && (200..300).contains(&entry.status)
}

/// The patients of a batch's writes that happened and of its other entries.
fn patients_by_kind(entries: &[crate::context::EntryRecord]) -> (Vec<String>, Vec<String>) {
    let (mut written, mut read) = (Vec::new(), Vec::new());
    for entry in entries {
        let into = if wrote(entry) {
            &mut written
        } else {
            &mut read
        };
        into.extend(entry.patients.iter().cloned());
    }
    for list in [&mut written, &mut read] {
        list.sort_unstable();
        list.dedup();
    }
    (written, read)
}

/// A batch or transaction answer with every read entry's answer replaced by the refusal
/// `too-many-patients`; the write entries' answers as they were.
fn reads_withheld(bytes: &[u8], fhir: &FhirRequest) -> Result<Bytes, BoxError> {
    let Some(RequestBody::Bundle { entries, .. }) = fhir.body() else {
        return Ok(Bytes::copy_from_slice(bytes));
    };
    let mut answer: serde_json::Value = serde_json::from_slice(bytes)?;
    let refused =
        bundle::outcome_entry(&crate::outcome::denied_outcome(DenyReason::TooManyPatients));
    if let Some(answered) = answer
        .get_mut("entry")
        .and_then(serde_json::Value::as_array_mut)
    {
        for (entry, request) in answered.iter_mut().zip(entries) {
            if !request.interaction().is_write() {
                *entry = refused.clone();
            }
        }
    }
    Ok(Bytes::from(serde_json::to_vec(&answer)?))
}
