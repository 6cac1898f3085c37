//! The per-request record: what each layer learned, for the access log and metrics.
//!
//! The access-log layer sits outside the others and cannot see the extensions they add, so it
//! puts one shared [`RequestRecord`] into the request; inner layers fill it in as they go (the
//! way pingora keeps one per-request context instead of scattered state).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use portvagt_policy::{FhirRequest, Interaction, ResourceType};

use crate::auth::Principal;

/// What the inner layers learned about one request.
#[derive(Debug, Default, Clone)]
pub struct RecordFields {
    /// The token's `sub`.
    pub principal: Option<String>,
    /// The token's `client_id` (or `azp`).
    pub client_id: Option<String>,
    /// The classified interaction.
    pub interaction: Option<Interaction>,
    /// The resource type addressed.
    pub resource_type: Option<ResourceType>,
    /// `allow` or `deny`.
    pub decision: Option<&'static str>,
    /// The stable reason code of a denial or error.
    pub reason: Option<&'static str>,
    /// Time from sending to the backend until its response headers arrived.
    pub upstream_latency: Option<Duration>,
    /// The backend's HTTP status.
    pub upstream_status: Option<u16>,
    /// The authenticated caller, for the audit record.
    pub caller: Option<Arc<Principal>>,
    /// The classified request, for the audit record.
    pub request: Option<Arc<FhirRequest>>,
    /// The patients the answer was about (ids), as the proxy saw it leave.
    pub patients: Vec<String>,
    /// The patients the request touched before its answer: named (in every spelling, by
    /// identifier once resolved), written, and the owners of what a write changed (read
    /// first). Every one of them gets the event in their log, whatever the answer held.
    /// `None` when the proxy never saw the request (the audit layer then reads its reach).
    pub touched: Option<Vec<String>>,
    /// For a batch or transaction: each entry as an access of its own (BALP records each).
    pub entries: Vec<EntryRecord>,
    /// The reason given for a break-the-glass access.
    pub break_glass: Option<String>,
    /// The patients whose consent blocks the break-the-glass access set aside, or whose data
    /// it read without a treatment relationship (værdispring).
    pub break_glass_patients: Vec<String>,
    /// Per patient, the basis of the access where the treatment relationship is checked:
    /// `relationship <evidence>` or `vaerdispring`.
    pub bases: Vec<(String, String)>,
    /// For a followed paging link: the request it continues (`/fhir/Observation?code=x`),
    /// which is what the audit record names instead of the link.
    pub continues: Option<String>,
    /// A citizen's own block made or lifted (on the citizen listener).
    pub citizen_block: Option<CitizenBlockRecord>,
}

/// A citizen's block as the audit record names it, so that her log can say "Du spærrede for
/// …" / "Du ophævede spærringen for …".
#[derive(Debug, Clone)]
pub struct CitizenBlockRecord {
    /// `made` or `lifted`.
    pub change: &'static str,
    /// The Consent's id.
    pub consent: String,
    /// Whom it blocks, by the name her log showed.
    pub display: Option<String>,
}

/// One entry of a batch or transaction, as it was answered.
#[derive(Debug, Clone)]
pub struct EntryRecord {
    /// The entry's request.
    pub request: Arc<FhirRequest>,
    /// The status its answer carried (`0` if none could be read).
    pub status: u16,
    /// The patients it touched: named, looked up, written, owners before a write, and those in
    /// its answer.
    pub patients: Vec<String>,
}

/// Shared handle to a request's record; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord(Arc<Mutex<RecordFields>>);

impl RequestRecord {
    /// Locks the record to read or fill it; never held across an await.
    pub fn fields(&self) -> MutexGuard<'_, RecordFields> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Records into the request's record, if the request has one.
pub fn record<B>(request: &http::Request<B>, fill: impl FnOnce(&mut RecordFields)) {
    if let Some(record) = request.extensions().get::<RequestRecord>() {
        fill(&mut record.fields());
    }
}

/// The client's address, put into request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);
