//! The audit trail: `[audit]` (the spool, its seal key, failing open or closed) and
//! `[audit.ship]` (the audit repository). Only what the operator wrote, with its defaults:
//! nothing here opens the spool or reads a key (that is [`crate::audit`]'s, at start).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The spool folder (a persistent volume): append-only, hash-chained segment files.
    pub spool_dir: PathBuf,
    /// `closed` (default): a request whose audit record cannot be written is answered 503.
    /// `open`: it goes through, counted in `portvagt_audit_records_lost_total` and logged.
    #[serde(default)]
    pub failure_mode: AuditFailureMode,
    /// Segment files roll over at this size.
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
    /// This instance's name in `AuditEvent.source.observer` (default: from the host name).
    #[serde(default)]
    pub observer: Option<String>,
    /// Where the spooled events are shipped.
    #[serde(default)]
    pub ship: Option<AuditShipConfig>,
    /// Portvagt's seal key (P-256 PKCS#8 PEM): the chain is sealed with signed checkpoints, so
    /// that `portvagt audit verify --jwks` proves nothing was cut off either end. Absent: the
    /// chain is not sealed (logged as a warning at start).
    #[serde(default)]
    pub seal_key: Option<PathBuf>,
    /// The seal key's `kid`, as in the JWK Set given to `audit verify`.
    #[serde(default = "defaults::seal_key_id")]
    pub seal_key_id: String,
    /// The JWK Set of every seal key the spool's chain may hold (the key before a rotation
    /// and the current one): what the shipper's checks trust. Absent: the seal key alone.
    #[serde(default)]
    pub seal_jwks: Option<PathBuf>,
    /// A seal at least this often while the gateway runs (busy or idle).
    #[serde(default = "defaults::seal_every", with = "humantime_serde")]
    pub seal_every: Duration,
    /// The most patients one request's answer may be about (BALP: one AuditEvent each); an
    /// answer about more is refused, 403 `too-many-patients`, and recorded as one event. What
    /// one request can cost the spool is bounded by it (about 3.3 KB per event: under 4 MiB
    /// for 1,000).
    #[serde(default = "defaults::max_patients_per_request")]
    pub max_patients_per_request: usize,
    /// Below this much free space on the spool's file system the gateway is not ready (503
    /// `audit-spool-low` on `/readyz`), so traffic goes to replicas that can still record it.
    #[serde(default = "defaults::min_free_bytes")]
    pub min_free_bytes: u64,
}

/// `[audit.ship]`: the audit FHIR repository.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditShipConfig {
    /// The repository's FHIR base URL (transaction Bundles are POSTed to it).
    pub url: String,
    /// Events per transaction.
    #[serde(default = "defaults::ship_batch_size")]
    pub batch_size: usize,
    /// CA certificates for an https repository (default: the public web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for an mTLS repository.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// Segments the repository has acknowledged in full are deleted once their last record is
    /// this old (`"0s"`: as soon as they are shipped). Absent: shipped segments are kept.
    /// Unshipped records are never deleted.
    #[serde(default, with = "humantime_serde")]
    pub keep_shipped: Option<Duration>,
}

/// What happens when the audit record cannot be written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailureMode {
    /// Refuse the request (503).
    #[default]
    Closed,
    /// Let it through, loudly.
    Open,
}
