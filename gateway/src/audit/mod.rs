//! The audit trail: every FHIR access decision (allowed, denied, failed, break-the-glass) and
//! every token exchange becomes IHE BALP AuditEvents ([`event`]), written to the durable,
//! hash-chained spool ([`spool`]) BEFORE the answer leaves the gateway. If that cannot be done
//! the answer is 503 (fail closed), unless the operator chose to fail open, which is counted
//! and logged loudly. With a seal key the chain carries signed checkpoints ([`seal`]), and
//! `portvagt audit verify DIR --jwks FILE` proves it complete ([`verify`]).

pub mod anchor;
pub mod citizen;
pub mod event;
pub mod follow_up;
pub mod position;
pub(crate) mod reading;
pub mod seal;
pub mod shipper;
pub mod spool;
pub mod verify;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use self::event::{AccessFacts, AuditSource, audit_events};
use self::seal::{SealKeys, Sealer};
use self::shipper::Shipper;
use self::spool::{Spool, SpoolError};
use crate::config::{AuditConfig, AuditFailureMode, ConfigError};
use crate::metrics::Metrics;

/// How long a request waits for its record to be durable.
const DURABLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// The audit record of a request could not be made durable: the request is answered 503.
#[derive(Debug, thiserror::Error)]
#[error("the access could not be recorded in the audit trail")]
pub struct AuditUnavailableError;

/// Writes audit records. Built once at start.
#[derive(Debug)]
pub struct Auditor {
    /// Opened by [`Auditor::open`] when the gateway starts serving (`check-config` never
    /// touches a live spool).
    spool: OnceLock<Spool>,
    spool_dir: PathBuf,
    segment_bytes: u64,
    source: AuditSource,
    fail_open: bool,
    metrics: Arc<Metrics>,
    /// `max_patients_per_request`: more make one event, not one each.
    max_patients: usize,
    /// `min_free_bytes`: readiness needs this much free on the spool's file system.
    min_free_bytes: u64,
    /// Taken and started by the server.
    shipper: Mutex<Option<Shipper>>,
    /// The shipper's client, whose certificates a reload reads again.
    ship_tls: Option<Arc<crate::https::ReloadableHttps>>,
    /// Seals the chain, when a seal key is configured.
    sealer: Option<Arc<Sealer>>,
    /// The seal keys the shipper's checks trust (`seal_jwks` and the seal key's own).
    trusted: Option<SealKeys>,
}

impl Auditor {
    /// Prepares the audit trail; the spool folder must exist or be creatable. The spool itself
    /// is opened by [`Auditor::open`].
    pub fn new(
        config: &AuditConfig,
        site: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Auditor, ConfigError> {
        std::fs::create_dir_all(&config.spool_dir).map_err(|e| {
            ConfigError::new(
                "audit.spool_dir",
                format!("{}: {e}", config.spool_dir.display()),
            )
        })?;
        let observer = config.observer.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .map_or_else(|| "portvagt".to_owned(), |name| format!("portvagt@{name}"))
        });
        let shipper = config
            .ship
            .as_ref()
            .map(|ship| Shipper::new(&config.spool_dir, ship, &observer, metrics.clone()))
            .transpose()?;
        let sealer = config
            .seal_key
            .as_deref()
            .map(|key| Sealer::load(key, &config.seal_key_id, &observer, config.seal_every))
            .transpose()?
            .map(Arc::new);
        let trusted = match (&sealer, &config.seal_jwks) {
            (Some(sealer), Some(path)) => Some(
                SealKeys::load(path)
                    .and_then(|keys| sealer.keys().with(&keys))
                    .map_err(|e| ConfigError::new("audit.seal_jwks", e))?,
            ),
            (Some(sealer), None) => Some(sealer.keys().clone()),
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "audit.seal_jwks",
                    "needs audit.seal_key (the chain is not sealed without it)",
                ));
            }
            (None, None) => None,
        };
        Ok(Auditor {
            sealer,
            trusted,
            ship_tls: shipper.as_ref().map(Shipper::tls),
            shipper: Mutex::new(shipper),
            spool: OnceLock::new(),
            spool_dir: config.spool_dir.clone(),
            segment_bytes: config.segment_bytes,
            source: AuditSource {
                observer,
                site: site.to_owned(),
            },
            fail_open: config.failure_mode == AuditFailureMode::Open,
            metrics,
            max_patients: config.max_patients_per_request.max(1),
            min_free_bytes: config.min_free_bytes,
        })
    }

    /// Opens the spool (locking it against a second process, cutting off a record a crash
    /// left unfinished) and starts its writer. Once; later calls do nothing.
    pub fn open(&self) -> Result<(), SpoolError> {
        if self.spool.get().is_none() {
            if self.sealer.is_none() {
                tracing::warn!(
                    "audit.seal_key is not set: the audit chain is not sealed, so records cut off either end of the spool cannot be detected"
                );
            }
            let spool = Spool::open(&self.spool_dir, self.segment_bytes, self.sealer.clone())?;
            let _ = self.spool.set(spool);
        }
        Ok(())
    }

    /// Closes the spool when the gateway stops: a `close` seal ends the chain, and any later
    /// record is refused (503).
    pub async fn close(&self) {
        if let Some(spool) = self.spool.get()
            && let Err(error) = spool.close().await
        {
            tracing::error!(%error, "audit spool: closing failed");
        }
    }

    /// Records one access: its AuditEvents are durable when this returns `Ok`.
    pub async fn record(&self, facts: &AccessFacts<'_>) -> Result<(), AuditUnavailableError> {
        self.record_all(std::slice::from_ref(facts)).await
    }

    /// Records several accesses made by one request (a batch's entries) in one append: all of
    /// them are on disk, or none is acknowledged.
    pub async fn record_all(&self, all: &[AccessFacts<'_>]) -> Result<(), AuditUnavailableError> {
        let Some(spool) = self.spool.get() else {
            return self.failed(&SpoolError::Stopped);
        };
        // One event per patient, up to the bound: a record about more (a refusal that named
        // them; an answer over the bound is refused before it leaves) is one event, so that no
        // request can cost the spool more than the bound.
        let events: Vec<Vec<u8>> = all
            .iter()
            .flat_map(|facts| {
                // Only a refusal is cut down: what left is recorded whole (an export's file,
                // whose patients the bound does not limit, is one per patient too).
                if facts.patients.len() > self.max_patients && facts.status >= 400 {
                    tracing::warn!(
                        patients = facts.patients.len(),
                        bound = self.max_patients,
                        "audit record about more patients than the bound: recorded as one event"
                    );
                    let bounded = AccessFacts {
                        patients: &[],
                        bases: &[],
                        ..*facts
                    };
                    audit_events(&bounded, &self.source)
                } else {
                    audit_events(facts, &self.source)
                }
            })
            .collect();
        let count = events.len() as u64;
        let started = Instant::now();
        // A disk that hangs must not hang requests forever: after this long the answer is 503
        // (the record may still land later).
        let written = tokio::time::timeout(DURABLE_WITHIN, spool.append(events))
            .await
            .unwrap_or(Err(SpoolError::Write("not durable within 10 s".into())));
        self.metrics
            .audit_write_duration
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(_) => {
                self.metrics.audit_records.inc_by(count);
                Ok(())
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&self, error: &SpoolError) -> Result<(), AuditUnavailableError> {
        self.metrics.audit_write_failures.inc();
        if self.fail_open {
            tracing::error!(
                %error,
                "AUDIT RECORD LOST: the spool could not be written and audit.failure_mode = \"open\" let the request through"
            );
            self.metrics.audit_records_lost.inc();
            Ok(())
        } else {
            tracing::error!(%error, "audit spool unavailable: answering 503");
            Err(AuditUnavailableError)
        }
    }

    /// The free space (for this process) and the size of the spool's file system, in bytes;
    /// also set as `portvagt_audit_spool_free_bytes` and `…_capacity_bytes`.
    pub fn spool_space(&self) -> Option<(u64, u64)> {
        let stat = rustix::fs::statvfs(&self.spool_dir).ok()?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        let capacity = stat.f_blocks.saturating_mul(stat.f_frsize);
        self.metrics
            .audit_spool_free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
        self.metrics
            .audit_spool_capacity_bytes
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        Some((free, capacity))
    }

    /// Whether the spool has at least `[audit] min_free_bytes` free (unknown counts as not).
    pub fn spool_has_headroom(&self) -> bool {
        self.spool_space()
            .is_some_and(|(free, _)| free >= self.min_free_bytes)
    }

    /// The most patients one request's answer may be about (`max_patients_per_request`).
    pub fn max_patients_per_request(&self) -> usize {
        self.max_patients
    }

    /// Whether the spool can be written: opened, and a small file can be created and removed
    /// beside the segments (a full or read-only disk says no). For readiness.
    pub async fn spool_writable(&self) -> bool {
        if self.spool.get().is_none() {
            return false;
        }
        let probe = self.spool_dir.join(".readyz-probe");
        tokio::task::spawn_blocking(move || {
            spool::create_fresh(&probe)
                .and_then(|mut file| std::io::Write::write_all(&mut file, b"probe"))
                .and_then(|()| std::fs::remove_file(&probe))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// The spool, once opened.
    pub fn spool(&self) -> Option<&Spool> {
        self.spool.get()
    }

    /// Reads the shipper's CA and client certificate again (nothing to do without one).
    pub fn reload_ship_tls(&self) -> Result<(), String> {
        self.ship_tls.as_ref().map_or(Ok(()), |tls| {
            tls.reload().map_err(|e| format!("audit.ship: {e}"))
        })
    }

    /// Starts shipping to the audit repository, if one is configured (once; later calls do
    /// nothing). Needs a Tokio runtime.
    pub fn start_shipping(&self) {
        let shipper = self
            .shipper
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let (Some(shipper), Some(spool)) = (shipper, self.spool.get()) {
            tokio::spawn(shipper.run(spool.clone(), self.trusted.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
