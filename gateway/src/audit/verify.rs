//! `portvagt audit verify DIR [--jwks FILE]`: walks every segment of a spool and checks the hash
//! chain, the sequence numbers and each segment's recorded head, and names the first record
//! that breaks them. A last line cut short by a crash is reported, not counted as tampering.
//!
//! With the seal keys ([`super::seal`]) it also proves completeness: every seal is signed by a
//! trusted key at its own place in the chain; segments missing at the front were allowed to go
//! by a `prune` seal; and the chain ends in a `close` seal, or in a fresh one while a gateway
//! holds the spool's lock (it is writing) — otherwise the trail stops where it should not
//! ([`End::Unclosed`]).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::seal::{Seal, SealKeys, SealKind};
use super::spool::{GENESIS, RecordLine, SegmentHeader, read_line, segments, sha256_hex};

/// Seconds a seal may be late beyond twice its promised interval before a running gateway's
/// trail counts as stopped.
const LATE_SEAL_GRACE: u64 = 5;

/// How a verification is made.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The trusted seal keys; without them only the chain is checked.
    pub keys: Option<&'a SealKeys>,
    /// Now, in seconds since the Unix epoch (whether the last seal is fresh).
    pub now: u64,
}

impl Check<'_> {
    /// The chain only, no seals.
    pub fn chain_only() -> Check<'static> {
        Check { keys: None, now: 0 }
    }
}

/// How the trail ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Seals were not checked (no keys given).
    Unchecked,
    /// A `close` seal at this time ends it: the gateway stopped cleanly.
    Closed(u64),
    /// A gateway holds the spool's lock and the last seal (at this time) is fresh: it is
    /// writing.
    Live(u64),
    /// No close and no fresh seal: the gateway stopped without closing (a crash or a kill),
    /// or records were cut off the end. The last seal, if any, and the records after it.
    Unclosed {
        /// The time of the last seal.
        last_seal: Option<u64>,
        /// Records written after it.
        after: u64,
    },
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Event records checked.
    pub records: u64,
    /// Seals found (checked when keys were given).
    pub seals: u64,
    /// Segments checked.
    pub segments: u64,
    /// The first and last sequence numbers in the spool.
    pub first_seq: u64,
    /// The last sequence number.
    pub last_seq: u64,
    /// The chain head: the hash of the last record.
    pub head: String,
    /// A last line cut short (never acknowledged), if there is one.
    pub unfinished_tail: Option<PathBuf>,
    /// How the trail ends.
    pub end: End,
    /// The gateway instance that made the last seal (checked with keys).
    pub observer: Option<String>,
    /// The chain's id, the same in every seal and segment header (checked with keys).
    pub chain: Option<String>,
    /// Runs that ended without a `close` and were followed by an `open`: a crash, a kill, or
    /// records cut off (or forged) while the gateway was down. Found from the chain itself
    /// (the record before the `open` is not a close that holds), checked only with keys.
    pub unclean_restarts: Vec<Restart>,
}

/// An `open` seal that does not follow a `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// The `open` seal's sequence number.
    pub seq: u64,
    /// Its time.
    pub time: u64,
    /// The records between the run's last seal and the `open`: no seal of their own run
    /// vouches for them (written just before a crash, or forged). Unknown (`None`) when the
    /// segment that showed it was pruned and a prune seal carried it on.
    pub unsealed: Option<u64>,
}

/// The first place the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{segment}, line {line}: {problem}")]
pub struct ChainBrokenError {
    /// The segment file.
    pub segment: String,
    /// The line within it (1 = the header).
    pub line: u64,
    /// What is wrong.
    pub problem: String,
}

/// Whether a process holds the spool's lock (a gateway writing it).
fn someone_writes(dir: &Path) -> bool {
    let lock = dir.join("spool.lock");
    // Only a plain file: opening a FIFO put there would hang.
    if !std::fs::symlink_metadata(&lock).is_ok_and(|meta| meta.file_type().is_file()) {
        return false;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .open(&lock)
        .is_ok_and(|file| {
            matches!(
                file.try_lock_shared(),
                Err(std::fs::TryLockError::WouldBlock)
            )
        })
}

/// Verifies the spool in `dir`.
pub fn verify(dir: &Path, check: Check<'_>) -> Result<ChainReport, ChainBrokenError> {
    let broken = |segment: &Path, line: u64, problem: String| ChainBrokenError {
        segment: segment.display().to_string(),
        line,
        problem,
    };
    // Read before the segments are listed: a gateway shipping meanwhile only moves it on.
    let shipped = super::position::position(dir);
    let files = segments(dir).map_err(|e| broken(dir, 0, e.to_string()))?;
    if files.is_empty() {
        return Err(broken(dir, 0, "no segment files".into()));
    }
    let (mut next_seq, mut head) = (1u64, GENESIS.to_owned());
    let mut report = ChainReport {
        records: 0,
        seals: 0,
        segments: 0,
        first_seq: 1,
        last_seq: 0,
        head: head.clone(),
        unfinished_tail: None,
        end: End::Unchecked,
        observer: None,
        chain: None,
        unclean_restarts: Vec::new(),
    };
    // The last seal (and the records after it), whether the last record was a close, and the
    // first record a prune requires to be kept.
    let mut last_seal: Option<Seal> = None;
    let mut after_seal = 0u64;
    let mut after_close = false;
    let mut kept_from = 1u64;
    let mut first_record = true;
    let mut headers_chain: Option<String> = None;
    let last = files.len() - 1;
    for (index, (number, path)) in files.iter().enumerate() {
        let expected_number = files[0].0 + index as u64;
        if *number != expected_number {
            return Err(broken(
                path,
                0,
                format!("segment {expected_number} is missing"),
            ));
        }
        let file = std::fs::File::open(path).map_err(|e| broken(path, 0, e.to_string()))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        let mut line_number = 0u64;
        loop {
            let read = read_line(&mut reader, &mut line)
                .map_err(|e| broken(path, line_number + 1, e.to_string()))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            if !line.ends_with(b"\n") {
                if index == last {
                    report.unfinished_tail = Some(path.clone());
                    break;
                }
                return Err(broken(path, line_number, "a line without its end".into()));
            }
            let body = &line[..line.len() - 1];
            if line_number == 1 {
                let header: SegmentHeader = serde_json::from_slice(body)
                    .map_err(|e| broken(path, 1, format!("not a segment header: {e}")))?;
                if let Some(chain) = &header.chain {
                    headers_chain.get_or_insert_with(|| chain.clone());
                    if headers_chain.as_ref() != Some(chain) {
                        return Err(broken(path, 1, "a segment of another chain".into()));
                    }
                }
                // The first segment may start later than 1 when older ones were pruned.
                if index == 0 {
                    (next_seq, head) = (header.first_seq, header.head.clone());
                    report.first_seq = header.first_seq;
                    if header.first_seq == 1 && header.head != GENESIS {
                        return Err(broken(
                            path,
                            1,
                            "record 1 must follow the genesis head".into(),
                        ));
                    }
                }
                if header.segment != *number || header.first_seq != next_seq || header.head != head
                {
                    return Err(broken(
                        path,
                        1,
                        format!(
                            "the header says segment {} from record {} after {}, the chain is at record {next_seq} after {head}",
                            header.segment, header.first_seq, header.head
                        ),
                    ));
                }
                continue;
            }
            let record = RecordLine::parse(body)
                .map_err(|e| broken(path, line_number, format!("not a record: {e}")))?;
            if record.seq != next_seq {
                return Err(broken(
                    path,
                    line_number,
                    format!("record {} where record {next_seq} belongs", record.seq),
                ));
            }
            if record.prev != head {
                return Err(broken(
                    path,
                    line_number,
                    format!(
                        "record {next_seq} does not follow the record before it (altered, inserted or removed)"
                    ),
                ));
            }
            let close = match (record.seal, check.keys) {
                (None, _) => {
                    report.records += 1;
                    after_seal += 1;
                    false
                }
                (Some(_), None) => {
                    report.seals += 1;
                    false
                }
                (Some(jws), Some(keys)) => {
                    let seal = keys.check(jws).map_err(|problem| {
                        broken(path, line_number, format!("seal {next_seq}: {problem}"))
                    })?;
                    // Seals from before chains had ids carry none.
                    if !seal.chain.is_empty()
                        && report.chain.get_or_insert_with(|| seal.chain.clone()) != &seal.chain
                    {
                        return Err(broken(
                            path,
                            line_number,
                            format!("seal {next_seq} belongs to another chain"),
                        ));
                    }
                    if seal.seq != record.seq || seal.prev != record.prev {
                        return Err(broken(
                            path,
                            line_number,
                            format!(
                                "seal {next_seq} was made for record {} of another place or chain",
                                seal.seq
                            ),
                        ));
                    }
                    if seal.kind == SealKind::Prune {
                        kept_from = kept_from.max(seal.first_kept_seq.unwrap_or(0));
                        // Restarts a pruned segment showed, carried on by the prune.
                        for &seq in &seal.unclean {
                            if !report.unclean_restarts.iter().any(|r| r.seq == seq) {
                                report.unclean_restarts.push(Restart {
                                    seq,
                                    time: seal.time,
                                    unsealed: None,
                                });
                            }
                        }
                    }
                    // What the open says of the run before is not taken on trust: the chain
                    // shows whether a close that holds came right before it.
                    if seal.kind == SealKind::Open && !first_record && !after_close {
                        report.unclean_restarts.push(Restart {
                            seq: seal.seq,
                            time: seal.time,
                            unsealed: Some(after_seal),
                        });
                    }
                    report.seals += 1;
                    after_seal = 0;
                    let close = seal.kind == SealKind::Close;
                    last_seal = Some(seal);
                    close
                }
            };
            after_close = close;
            first_record = false;
            head = sha256_hex(body);
            report.last_seq = next_seq;
            next_seq += 1;
        }
        if line_number == 0 {
            return Err(broken(path, 1, "an empty segment".into()));
        }
        // Only the segment being written may hold no record yet.
        if line_number == 1 && index != last {
            return Err(broken(path, 1, "a segment without records".into()));
        }
        report.segments += 1;
    }
    report.head = head;
    report.observer = last_seal.as_ref().map(|seal| seal.observer.clone());
    if report.chain.is_some() && headers_chain.is_some() && report.chain != headers_chain {
        return Err(broken(
            &files[0].1,
            1,
            "the segments name another chain than the seals".into(),
        ));
    }
    if check.keys.is_some() {
        if report.first_seq > kept_from {
            return Err(broken(
                &files[0].1,
                1,
                format!(
                    "records {kept_from} to {} are gone, and no seal allowed deleting them",
                    report.first_seq - 1
                ),
            ));
        }
        report.end = match &last_seal {
            Some(seal) if seal.kind == SealKind::Close && after_seal == 0 => End::Closed(seal.time),
            Some(seal)
                if seal.kind != SealKind::Close
                    && someone_writes(dir)
                    && check.now
                        <= seal.time
                            + 2 * seal.next_within.unwrap_or_default()
                            + LATE_SEAL_GRACE =>
            {
                End::Live(seal.time)
            }
            seal => End::Unclosed {
                last_seal: seal.as_ref().map(|s| s.time),
                after: after_seal,
            },
        };
    }
    // The shipper's acknowledged position: records the repository has must still be here.
    if shipped.seq > report.last_seq {
        return Err(broken(
            dir,
            0,
            format!(
                "the audit repository acknowledged records up to {}, but the spool ends at {}: records were cut off",
                shipped.seq, report.last_seq
            ),
        ));
    }
    Ok(report)
}

/// Checks the spool against the anchor the audit repository holds for it (the seal `jws` of
/// [`super::anchor`]): the spool must reach that seal, and hold that very seal at its place.
/// Returns the anchored seal's sequence number.
pub fn check_anchor(
    dir: &Path,
    report: &ChainReport,
    keys: &SealKeys,
    jws: &str,
) -> Result<u64, ChainBrokenError> {
    let broken = |problem: String| ChainBrokenError {
        segment: dir.display().to_string(),
        line: 0,
        problem,
    };
    let seal = keys
        .check(jws)
        .map_err(|problem| broken(format!("the audit repository's anchor: {problem}")))?;
    if report
        .chain
        .as_deref()
        .is_some_and(|chain| chain != seal.chain)
    {
        return Err(broken(
            "the audit repository's anchor belongs to another chain".into(),
        ));
    }
    if seal.seq > report.last_seq {
        return Err(broken(format!(
            "the audit repository's anchor shows the chain reached record {} (sealed), but the spool ends at {}: records were cut off",
            seal.seq, report.last_seq
        )));
    }
    if seal.seq < report.first_seq {
        // Pruned after shipping: nothing left here to compare.
        return Ok(seal.seq);
    }
    let found = seal_at(dir, seal.seq).map_err(broken)?;
    if found.as_deref() != Some(jws) {
        return Err(broken(format!(
            "record {} is not the seal the audit repository holds for it: the chain was rewritten",
            seal.seq
        )));
    }
    Ok(seal.seq)
}

/// The seal (JWS) at sequence number `seq`, if that record is one.
fn seal_at(dir: &Path, seq: u64) -> Result<Option<String>, String> {
    for (_, path) in segments(dir).map_err(|e| e.to_string())? {
        let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        while read_line(&mut reader, &mut line).map_err(|e| e.to_string())? > 0 {
            let Ok(record) = RecordLine::parse(line.trim_ascii_end()) else {
                continue;
            };
            if record.seq == seq {
                return Ok(record.seal.map(str::to_owned));
            }
        }
    }
    Ok(None)
}
