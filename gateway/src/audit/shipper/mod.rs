//! The shipper: sends spooled AuditEvents, in order, in FHIR `transaction` Bundles to the audit
//! repository, and remembers (in `shipped.json` beside the segments, replaced atomically) how
//! far the repository has acknowledged. It retries with exponential backoff. It deletes a
//! segment only when the repository has acknowledged every record in it, its acknowledgement
//! is on disk, and its last record is older than `keep_shipped` (when that is set); the
//! verifier then starts the chain at the first segment left; on a sealed spool a `prune` seal
//! allowing it is durable before anything is deleted. What the writer has just made durable
//! it takes from memory ([`super::spool::Handoff`]), as the writer wrote and hashed it. What it
//! reads from the files (at start, and when it is behind what memory holds) it checks, record
//! by record, continues the chain it has shipped so far (sequence number, the previous
//! record's hash, each segment header): a spool altered behind the gateway's back stops the
//! shipping (`portvagt_audit_chain_broken` = 1) instead of being copied to the repository.
//! Seals are not shipped. Each event is PUT under the SHA-256 of its spool record: a batch sent again after
//! a crash (between the repository's answer and the position's write) stores nothing twice,
//! and the repository's ids are the chain's hashes, an anchor outside the gateway. The
//! repository must allow client-assigned ids (update as create), as HAPI, Medplum and Azure
//! do. What it reads, and how, is [`super::reading`]; where it stands, [`super::position`];
//! the anchor it keeps in the repository, [`super::anchor`].
//! The Bundle it sends is written in `bundle`, around each event's spooled bytes: this file
//! neither parses nor rewrites an event.

mod bundle;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use serde_json::Value;

use self::bundle::transaction;
use super::anchor::{anchor_id, anchor_resource, anchor_seal, repository_get};
use super::position::{Position, position, save_position};
use super::reading::{
    Batch, ReadError, Reading, deletable, delete, first_seq_of, position_holds, read_batch,
    take_handed,
};
use super::seal::SealKeys;
use super::spool::Spool;
use crate::config::{AuditShipConfig, ConfigError};
use crate::https::{ClientIdentity, ReloadableHttps};
use crate::metrics::Metrics;

/// Now, as an RFC 3339 instant.
fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What the spool's side of the start check found.
struct Local {
    /// The verification (with seal keys).
    report: Option<super::verify::ChainReport>,
    /// The shipped position as read from the spool (its last event, and where it lies in
    /// the files); `None`: nothing shipped.
    held: Option<Position>,
}

/// Why a start check did not pass.
enum Trouble {
    /// The spool and the repository disagree: shipping stops.
    Broken(String),
    /// The repository could not be asked: asked again.
    Unanswered(String),
}

/// Transactions taken in a row before a lowered transaction size is doubled again.
const GROW_AFTER: u32 = 16;

/// Ships one spool to one repository.
#[derive(Debug)]
pub struct Shipper {
    dir: PathBuf,
    url: String,
    /// Its CA and client certificate are read again on reload.
    client: Arc<ReloadableHttps>,
    /// The most entries one transaction holds: `batch_size`, halved (below the size that was
    /// refused) each time the repository refuses a transaction of more than one entry as
    /// malformed or too large (Medplum takes at most 50 updates in one), so a repository with a
    /// lower limit than configured still gets every event instead of the same refused batch
    /// forever; doubled again, up to `batch_size`, after [`GROW_AFTER`] shipped in a row.
    batch: std::sync::atomic::AtomicUsize,
    /// `batch_size` as configured.
    configured_batch: usize,
    /// Transactions taken in a row since the size last changed.
    taken: std::sync::atomic::AtomicU32,
    keep_shipped: Option<Duration>,
    metrics: Arc<Metrics>,
    /// This instance's name, shown in the anchor.
    observer: String,
    /// Reads of the spool that failed in a row.
    io_failures: std::sync::atomic::AtomicU32,
}

impl Shipper {
    /// Prepares the client; errors name the config field.
    pub fn new(
        dir: &Path,
        config: &AuditShipConfig,
        observer: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Shipper, ConfigError> {
        let url = config.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::new(
                "audit.ship.url",
                "must be an http(s):// URL",
            ));
        }
        let identity = ClientIdentity::from_pair(
            config.client_cert.as_ref(),
            config.client_key.as_ref(),
            "audit.ship.client_cert",
        )?;
        let client = Arc::new(
            ReloadableHttps::new(
                config.ca_file.as_deref(),
                identity,
                Duration::from_secs(30),
                false,
            )
            .map_err(|e| ConfigError::new("audit.ship", e))?,
        );
        metrics
            .audit_ship_batch_size
            .set(i64::try_from(config.batch_size.max(1)).unwrap_or(i64::MAX));
        Ok(Shipper {
            dir: dir.to_owned(),
            url,
            client,
            batch: std::sync::atomic::AtomicUsize::new(config.batch_size.max(1)),
            configured_batch: config.batch_size.max(1),
            taken: std::sync::atomic::AtomicU32::new(0),
            keep_shipped: config.keep_shipped,
            metrics,
            observer: observer.to_owned(),
            io_failures: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The client, for reloading its certificates while it ships.
    pub fn tls(&self) -> Arc<ReloadableHttps> {
        Arc::clone(&self.client)
    }

    /// Ships forever: what is new, as soon as it is durable; after a failure, again after a
    /// growing pause (1 s doubling to 60 s).
    pub async fn run(self, spool: Spool, keys: Option<SealKeys>) {
        let written = spool.written();
        let mut backoff = Duration::from_secs(1);
        let dir = self.dir.clone();
        let Ok(mut at) = tokio::task::spawn_blocking(move || position(&dir)).await else {
            return;
        };
        // The position on disk is not taken on trust: the repository must hold the last
        // event it says was shipped, and the spool must reach as far as the anchor there.
        // The unclean restarts the spool shows, carried on in every prune seal.
        let mut local = None;
        let (unclean, mut anchored) = loop {
            let checked = match &local {
                Some(local) => Ok(local),
                None => self
                    .local_check(&at, keys.as_ref())
                    .await
                    .map(|found| &*local.insert(found)),
            };
            let checked = match checked {
                Ok(found) => self
                    .repository_check(&at, found, keys.as_ref(), spool.chain())
                    .await
                    .map(|anchored| (found, anchored)),
                Err(trouble) => Err(trouble),
            };
            match checked {
                Ok((found, anchored)) => {
                    // Where the position lies in the files, as read from them.
                    if let Some(held) = &found.held {
                        at.segment = held.segment;
                        at.offset = held.offset;
                        // The last event as the spool holds it (the repository was asked for
                        // that one), unless it was pruned away.
                        if held.last_event.is_some() {
                            at.last_event.clone_from(&held.last_event);
                        }
                    }
                    let unclean: Vec<u64> = found
                        .report
                        .iter()
                        .flat_map(|report| report.unclean_restarts.iter().map(|r| r.seq))
                        .collect();
                    break (unclean, anchored);
                }
                Err(Trouble::Broken(problem)) => {
                    // Checked again from the spool, in case the operator put it right.
                    local = None;
                    self.broken(&problem);
                }
                Err(Trouble::Unanswered(error)) => {
                    // The repository is not there yet: what waits is lag.
                    self.metrics.audit_ship_failures.inc();
                    let durable = written.load(std::sync::atomic::Ordering::Relaxed);
                    self.metrics
                        .audit_ship_lag
                        .set(i64::try_from(durable.saturating_sub(at.seq)).unwrap_or(i64::MAX));
                    tracing::warn!(%error, retry_in = ?backoff, "audit shipper: the repository did not answer the start check");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        };
        backoff = Duration::from_secs(1);
        // From now on the writer hands over what it makes durable (until this returns).
        let _wanted = spool.handoff().want();
        // On a sealed spool only records a seal vouches for are shipped, and when records
        // wait for one a seal is asked for (at most once a second).
        let mut asked = tokio::time::Instant::now() - Duration::from_secs(1);
        // When and up to which segment the last pruning looked.
        let mut pruned = (tokio::time::Instant::now(), 0);
        loop {
            let durable = written.load(std::sync::atomic::Ordering::Relaxed);
            let lag = durable.saturating_sub(at.seq);
            self.metrics
                .audit_ship_lag
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            let batch = self.next_batch(&spool, &at, durable, keys.as_ref()).await;
            let Some(batch) = batch else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            };
            if batch.events.is_empty() {
                // Seals without events (the open, idle seals, a close) move the anchor too,
                // over the last event shipped.
                let anchor = self.anchor(&batch, &at, anchored, spool.chain());
                if let Some((seq, anchor)) = anchor {
                    if let Err(error) = self.send(Vec::new(), Some(anchor)).await {
                        tracing::warn!(%error, "audit shipper: the repository did not take the anchor");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                        continue;
                    }
                    anchored = seq;
                }
                if batch.next != at {
                    at = batch.next;
                    self.save(at.clone()).await;
                }
                pruned = self.prune(&spool, &at, pruned, &unclean).await;
                if keys.is_some() && durable > at.seq && asked.elapsed() >= Duration::from_secs(1) {
                    asked = tokio::time::Instant::now();
                    if spool.seal_now().await.is_ok() {
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let count = batch.events.len();
            // The seal the batch ends at moves the anchor up to it, in the same transaction.
            let anchor = self.anchor(&batch, &at, anchored, spool.chain());
            let moved = anchor.as_ref().map(|(seq, _)| *seq);
            match self
                .send_all(batch.events, anchor.map(|(_, anchor)| anchor))
                .await
            {
                Ok(()) => {
                    anchored = moved.unwrap_or(anchored);
                    self.grow_batches();
                    at = batch.next;
                    self.save(at.clone()).await;
                    self.metrics.audit_shipped.inc_by(count as u64);
                    backoff = Duration::from_secs(1);
                    pruned = self.prune(&spool, &at, pruned, &unclean).await;
                }
                Err(error) if error.refused && self.smaller_batches(error.entries) => {
                    self.metrics.audit_ship_failures.inc();
                    tracing::warn!(%error, batch_size = self.batch(), "audit shipper: the repository refused the transaction; sending smaller ones");
                }
                Err(error) => {
                    self.metrics.audit_ship_failures.inc();
                    tracing::warn!(%error, retry_in = ?backoff, "audit shipper: the repository did not take the batch");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// The next batch after `at`, none beyond record `durable`: what the writer handed over,
    /// where it continues from `at`; else read from the files (checked); `None` after logging
    /// why there is none.
    async fn next_batch(
        &self,
        spool: &Spool,
        at: &Position,
        durable: u64,
        keys: Option<&SealKeys>,
    ) -> Option<Batch> {
        let reading = Reading {
            limit: self.batch(),
            through: durable,
            keys,
            keep_events: true,
        };
        if let Some(batch) = take_handed(spool.handoff(), at, reading) {
            return Some(batch);
        }
        let (dir, from, keys) = (self.dir.clone(), at.clone(), keys.cloned());
        let read = move || {
            let reading = Reading {
                keys: keys.as_ref(),
                ..reading
            };
            read_batch(&dir, from, reading)
        };
        self.read(tokio::task::spawn_blocking(read).await)
    }

    /// The anchor for the seal `batch` ends at, over the last event shipped with or before
    /// it, if that seal is later than the one `anchored` (an anchor never moves back, not even
    /// when old segments are shipped again).
    fn anchor(
        &self,
        batch: &Batch,
        at: &Position,
        anchored: u64,
        chain: &str,
    ) -> Option<(u64, Value)> {
        let (seq, jws) = batch
            .last_seal
            .as_ref()
            .filter(|(seq, _)| *seq > anchored)?;
        let last = batch
            .next
            .last_event
            .as_deref()
            .or(at.last_event.as_deref())?;
        let anchor = anchor_resource(chain, &self.observer, jws, last, &now_rfc3339());
        Some((*seq, anchor))
    }

    /// A read's batch, or `None` after logging why there is none (a broken chain sets
    /// `portvagt_audit_chain_broken`).
    fn read(
        &self,
        read: Result<Result<Batch, ReadError>, tokio::task::JoinError>,
    ) -> Option<Batch> {
        match read {
            Ok(Ok(batch)) => {
                self.metrics.audit_chain_broken.set(0);
                self.io_failures
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                Some(batch)
            }
            Ok(Err(ReadError::Broken(problem))) => {
                self.broken(&problem);
                None
            }
            Ok(Err(error)) => {
                // A segment gone or unreadable where shipping stands does not heal by itself.
                let failures = self
                    .io_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if failures + 1 >= 3 {
                    self.broken(&format!("reading the spool where shipping stands: {error}"));
                } else {
                    tracing::error!(%error, "audit shipper: reading the spool failed");
                }
                None
            }
            Err(_) => {
                tracing::error!("audit shipper: the spool reader failed");
                None
            }
        }
    }

    fn broken(&self, problem: &str) {
        self.metrics.audit_chain_broken.set(1);
        tracing::error!(
            %problem,
            "AUDIT CHAIN BROKEN: the spool does not continue what was shipped; shipping stops here (run `portvagt audit verify`)"
        );
    }

    /// The repository's answer to `GET {url}/{path}`: the resource, or `None` when it holds
    /// none (404, 410).
    async fn fetch(&self, path: &str) -> Result<Option<Value>, Trouble> {
        repository_get(&self.client.client(), &self.url, path)
            .await
            .map_err(Trouble::Unanswered)
    }

    /// Before anything is shipped, on the spool's side: it verifies whole (with the seal
    /// keys), and the shipped position is a record boundary of this chain. Returns what the
    /// repository's side needs.
    async fn local_check(&self, at: &Position, keys: Option<&SealKeys>) -> Result<Local, Trouble> {
        let (dir, position, owned_keys) = (self.dir.clone(), at.clone(), keys.cloned());
        let local = tokio::task::spawn_blocking(move || {
            let report = owned_keys
                .as_ref()
                .map(|keys| {
                    let check = super::verify::Check {
                        keys: Some(keys),
                        now: super::seal::unix_now(),
                    };
                    super::verify::verify(&dir, check).map_err(|broken| broken.to_string())
                })
                .transpose()?;
            let held = position_holds(&dir, &position)?;
            Ok::<_, String>(Local { report, held })
        })
        .await
        .map_err(|_| Trouble::Unanswered("the spool check did not finish".into()))?;
        local.map_err(Trouble::Broken)
    }

    /// ... and on the repository's: it holds the last event at or before the shipped position
    /// (a position moved forward over unshipped events is found), and the spool reaches, and
    /// holds, the seal the repository's anchor names. Returns the anchored seal's sequence
    /// number (0: none yet).
    async fn repository_check(
        &self,
        at: &Position,
        local: &Local,
        keys: Option<&SealKeys>,
        chain: &str,
    ) -> Result<u64, Trouble> {
        if let Some(hash) = local
            .held
            .as_ref()
            .and_then(|held| held.last_event.as_ref())
            && self.fetch(&format!("AuditEvent/{hash}")).await?.is_none()
        {
            return Err(Trouble::Broken(format!(
                "the repository does not hold AuditEvent/{hash}, at or before record {} where shipped.json says shipping reached: the position was moved over unshipped records, or the repository lost what it acknowledged",
                at.seq
            )));
        }
        let (Some(keys), Some(report)) = (keys, &local.report) else {
            return Ok(0);
        };
        let Some(anchor) = self
            .fetch(&format!("Provenance/{}", anchor_id(chain)))
            .await?
        else {
            return Ok(0);
        };
        let jws = anchor_seal(&anchor)
            .ok_or_else(|| Trouble::Broken("the repository's anchor holds no seal".into()))?;
        super::verify::check_anchor(&self.dir, report, keys, &jws)
            .map_err(|broken| Trouble::Broken(broken.problem))
    }

    /// Deletes the segments before `at` (acknowledged in full, the position saved) whose
    /// last record is older than `keep_shipped`, after a `prune` seal allowing it is durable:
    /// when the shipper has moved on to a new segment, and otherwise every 10 s (a kept
    /// segment ages). Returns when and where it looked.
    async fn prune(
        &self,
        spool: &Spool,
        at: &Position,
        last: (tokio::time::Instant, u64),
        unclean: &[u64],
    ) -> (tokio::time::Instant, u64) {
        let Some(keep) = self.keep_shipped else {
            return last;
        };
        let now = tokio::time::Instant::now();
        if at.segment == last.1 && now.duration_since(last.0) < Duration::from_secs(10) {
            return last;
        }
        let (dir, shipped_to) = (self.dir.clone(), at.segment);
        let found = tokio::task::spawn_blocking(move || deletable(&dir, shipped_to, keep)).await;
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::error!(%error, "audit shipper: listing shipped segments failed");
                return (now, at.segment);
            }
            Err(_) => return (now, at.segment),
        };
        let Some((newest, _)) = found.last() else {
            return (now, at.segment);
        };
        // The prune seal names the first record kept: the first of the segment after.
        let (dir, kept) = (self.dir.clone(), newest + 1);
        // A header is not signed: never beyond what was read and shipped.
        let first_kept_seq =
            match tokio::task::spawn_blocking(move || first_seq_of(&dir, kept)).await {
                Ok(Ok(seq)) => seq.min(at.seq + 1),
                _ => return (now, at.segment),
            };
        if let Err(error) = spool.seal_prune(first_kept_seq, unclean.to_vec()).await {
            tracing::error!(%error, "audit shipper: the prune seal could not be written; nothing deleted");
            return (now, at.segment);
        }
        let dir = self.dir.clone();
        match tokio::task::spawn_blocking(move || delete(&dir, &found)).await {
            Ok(Ok(deleted)) => {
                self.metrics.audit_segments_deleted.inc_by(deleted);
                tracing::info!(deleted, "audit shipper: deleted shipped spool segments");
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "audit shipper: deleting shipped segments failed");
            }
            Err(_) => tracing::error!("audit shipper: deleting shipped segments failed"),
        }
        (now, at.segment)
    }

    async fn save(&self, at: Position) {
        let dir = self.dir.clone();
        match tokio::task::spawn_blocking(move || save_position(&dir, at)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "audit shipper: saving the position failed"),
            Err(_) => tracing::error!("audit shipper: saving the position failed"),
        }
    }

    fn batch(&self) -> usize {
        self.batch.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Halves the transaction size below the `sent` entries the repository refused, if it
    /// can be.
    fn smaller_batches(&self, sent: usize) -> bool {
        let smaller = (self.batch().min(sent) / 2).max(1);
        if sent <= 1 || smaller >= self.batch() {
            return false;
        }
        self.batch
            .store(smaller, std::sync::atomic::Ordering::Relaxed);
        self.taken.store(0, std::sync::atomic::Ordering::Relaxed);
        self.metrics
            .audit_ship_batch_size
            .set(i64::try_from(smaller).unwrap_or(i64::MAX));
        true
    }

    /// After [`GROW_AFTER`] transactions taken in a row at a lowered size, tries twice the size
    /// (never more than configured): a repository's limit may have been a passing one.
    fn grow_batches(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let batch = self.batch();
        if batch >= self.configured_batch || self.taken.fetch_add(1, Relaxed) + 1 < GROW_AFTER {
            return;
        }
        let larger = (batch * 2).min(self.configured_batch);
        self.batch.store(larger, Relaxed);
        self.taken.store(0, Relaxed);
        self.metrics
            .audit_ship_batch_size
            .set(i64::try_from(larger).unwrap_or(i64::MAX));
    }

    /// The events (and the anchor, with the last of them) in transactions of at most
    /// `batch_size` entries each: a repository limits how many updates one transaction holds
    /// (Medplum: 50), and a read that goes on to its seal may hold more. A failure is retried
    /// from the first: PUTs under the record hashes store nothing twice.
    async fn send_all(
        &self,
        mut events: Vec<(String, Bytes)>,
        anchor: Option<Value>,
    ) -> Result<(), SendError> {
        let batch = self.batch();
        let size = batch.saturating_sub(1).max(1);
        while events.len() > size {
            let rest = events.split_off(size);
            self.send(events, None).await?;
            events = rest;
        }
        if batch <= 1 && anchor.is_some() {
            self.send(events, None).await?;
            return self.send(Vec::new(), anchor).await;
        }
        self.send(events, anchor).await
    }

    /// One transaction: every event stored, or none. Each is PUT under its record's hash, so a
    /// batch sent twice stores nothing twice.
    async fn send(
        &self,
        events: Vec<(String, Bytes)>,
        anchor: Option<Value>,
    ) -> Result<(), SendError> {
        let count = events.len() + usize::from(anchor.is_some());
        let bundle = transaction(&events, anchor.as_ref());
        let request = Request::post(&self.url)
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .header(header::ACCEPT, "application/fhir+json")
            .body(Full::new(Bytes::from(bundle)))
            .map_err(|e| e.to_string())?;
        let response = self.client.client().send(request).await?;
        if !response.status().is_success() {
            // What the repository says is wrong (an OperationOutcome), for the operator.
            let said: String = serde_json::from_slice::<Value>(response.body())
                .ok()
                .and_then(|outcome| {
                    outcome["issue"][0]["diagnostics"]
                        .as_str()
                        .or(outcome["issue"][0]["details"]["text"].as_str())
                        .map(|text| text.chars().take(300).collect())
                })
                .unwrap_or_default();
            return Err(SendError {
                entries: count,
                // It read the transaction and said no to its shape or size; smaller ones may
                // pass. Any other answer is the repository's trouble, retried as it is.
                refused: count > 1
                    && matches!(
                        response.status(),
                        http::StatusCode::BAD_REQUEST | http::StatusCode::PAYLOAD_TOO_LARGE
                    ),
                text: format!("the repository answered {}: {said}", response.status()),
            });
        }
        let answer: Value = serde_json::from_slice(response.body())
            .map_err(|_| "the repository's answer is not JSON".to_owned())?;
        let statuses: Vec<&str> = answer["entry"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|entry| entry["response"]["status"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let stored = |status: &&str| status.starts_with("200") || status.starts_with("201");
        if statuses.len() != count || !statuses.iter().all(stored) {
            return Err(format!("the repository did not store every event: {statuses:?}").into());
        }
        Ok(())
    }
}

/// Why the repository did not store a transaction.
#[derive(Debug)]
struct SendError {
    /// The repository refused the transaction itself (400, 413) and it held more than one
    /// entry.
    refused: bool,
    /// How many entries the transaction held.
    entries: usize,
    text: String,
}

impl From<String> for SendError {
    fn from(text: String) -> SendError {
        SendError {
            refused: false,
            entries: 0,
            text,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}
