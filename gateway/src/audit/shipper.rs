//! The shipper: sends spooled AuditEvents, in order, in FHIR `transaction` Bundles to the audit
//! repository, and remembers (in `shipped.json` beside the segments, replaced atomically) how
//! far the repository has acknowledged. It retries with exponential backoff and never deletes
//! anything. Delivery is at least once: a crash between the repository's answer and the
//! position's write sends that batch again.

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spool::{RecordLine, segment_name, segments};
use crate::auth::https::{ClientIdentity, HttpsClient};
use crate::config::{AuditShipConfig, ConfigError};
use crate::metrics::Metrics;

/// How far the repository has acknowledged: the next byte to read, in which segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The segment number.
    pub segment: u64,
    /// The byte offset of the next unshipped line in it.
    pub offset: u64,
    /// The sequence number of the last record shipped (0: none yet).
    pub seq: u64,
}

const POSITION_FILE: &str = "shipped.json";

/// Reads the acknowledged position of the spool in `dir` (the start, if nothing was shipped).
pub fn position(dir: &Path) -> Position {
    std::fs::read(dir.join(POSITION_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save_position(dir: &Path, position: Position) -> std::io::Result<()> {
    let temporary = dir.join(format!("{POSITION_FILE}.tmp"));
    let bytes = serde_json::to_vec(&position).map_err(std::io::Error::other)?;
    {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, dir.join(POSITION_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A batch read from the spool: the events and where the next batch starts.
struct Batch {
    events: Vec<Value>,
    next: Position,
}

/// Reads up to `limit` complete records after `from`.
fn read_batch(dir: &Path, from: Position, limit: usize) -> std::io::Result<Batch> {
    let mut at = from;
    if at.segment == 0 {
        match segments(dir)?.first() {
            Some((number, _)) => {
                at = Position {
                    segment: *number,
                    offset: 0,
                    seq: 0,
                }
            }
            None => {
                return Ok(Batch {
                    events: Vec::new(),
                    next: from,
                });
            }
        }
    }
    let mut events = Vec::new();
    loop {
        let path: PathBuf = dir.join(segment_name(at.segment));
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(at.offset))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            if events.len() >= limit {
                return Ok(Batch { events, next: at });
            }
            line.clear();
            let read = reader.read_until(b'\n', &mut line)?;
            if read == 0 || !line.ends_with(b"\n") {
                break;
            }
            at.offset += read as u64;
            let body = &line[..line.len() - 1];
            // The segment header has no `seq`: skip it.
            let Ok(record) = serde_json::from_slice::<RecordLine<'_>>(body) else {
                continue;
            };
            let event = serde_json::from_str(record.event.get()).map_err(std::io::Error::other)?;
            events.push(event);
            at.seq = record.seq;
        }
        // The end of this segment: the writer only starts the next one once this one is
        // complete, so if the next exists, go on there.
        if !dir.join(segment_name(at.segment + 1)).exists() {
            return Ok(Batch { events, next: at });
        }
        at = Position {
            segment: at.segment + 1,
            offset: 0,
            seq: at.seq,
        };
    }
}

/// Ships one spool to one repository.
#[derive(Debug)]
pub struct Shipper {
    dir: PathBuf,
    url: String,
    client: HttpsClient,
    batch: usize,
    metrics: Arc<Metrics>,
}

impl Shipper {
    /// Prepares the client; errors name the config field.
    pub fn new(
        dir: &Path,
        config: &AuditShipConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Shipper, ConfigError> {
        let url = config.url.trim_end_matches('/').to_owned();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ConfigError::new(
                "audit.ship.url",
                "must be an http(s):// URL",
            ));
        }
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::new(
                    "audit.ship.client_cert",
                    "give both client_cert and client_key, or neither",
                ));
            }
        };
        let client = HttpsClient::allowing_plain_http(
            config.ca_file.as_deref(),
            identity,
            Duration::from_secs(30),
        )
        .map_err(|e| ConfigError::new("audit.ship", e))?;
        Ok(Shipper {
            dir: dir.to_owned(),
            url,
            client,
            batch: config.batch_size.max(1),
            metrics,
        })
    }

    /// Ships forever: what is new, as soon as it is durable; after a failure, again after a
    /// growing pause (1 s doubling to 60 s).
    pub async fn run(self, written: Arc<std::sync::atomic::AtomicU64>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let at = position(&self.dir);
            let lag = written
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(at.seq);
            self.metrics
                .audit_ship_lag
                .set(i64::try_from(lag).unwrap_or(i64::MAX));
            let batch = {
                let dir = self.dir.clone();
                let limit = self.batch;
                tokio::task::spawn_blocking(move || read_batch(&dir, at, limit)).await
            };
            let batch = match batch {
                Ok(Ok(batch)) => batch,
                Ok(Err(error)) => {
                    tracing::error!(%error, "audit shipper: reading the spool failed");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(_) => return,
            };
            if batch.events.is_empty() {
                if batch.next != at {
                    let _ = save_position(&self.dir, batch.next);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let count = batch.events.len();
            match self.send(batch.events).await {
                Ok(()) => {
                    if let Err(error) = save_position(&self.dir, batch.next) {
                        tracing::error!(%error, "audit shipper: saving the position failed");
                    }
                    self.metrics.audit_shipped.inc_by(count as u64);
                    backoff = Duration::from_secs(1);
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

    /// One transaction: every event created, or none.
    async fn send(&self, events: Vec<Value>) -> Result<(), String> {
        let count = events.len();
        let entries: Vec<Value> = events
            .into_iter()
            .map(|event| {
                serde_json::json!({
                    "resource": event,
                    "request": { "method": "POST", "url": "AuditEvent" }
                })
            })
            .collect();
        let bundle = serde_json::json!({
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": entries,
        });
        let request = Request::post(&self.url)
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .header(header::ACCEPT, "application/fhir+json")
            .body(Full::new(Bytes::from(bundle.to_string())))
            .map_err(|e| e.to_string())?;
        let response = self.client.send(request).await?;
        if !response.status().is_success() {
            return Err(format!("the repository answered {}", response.status()));
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
        if statuses.len() != count || !statuses.iter().all(|s| s.starts_with("201")) {
            return Err(format!(
                "the repository did not create every event: {statuses:?}"
            ));
        }
        Ok(())
    }
}
