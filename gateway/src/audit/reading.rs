//! Reading the spool for the shipper: batches of events that continue the chain already
//! shipped (and, on a sealed spool, that a seal read in the same read vouches for), and the
//! segments that may be deleted once shipped.

use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

use super::position::Position;
use super::seal::SealKeys;
use super::spool::{
    HandedKind, Handoff, RecordLine, SegmentHeader, read_line, segment_name, segments, sha256_hex,
};

/// A batch read from the spool: the events (each with its record hash, which becomes its id
/// in the repository), where the next batch starts, and the last seal read (checked).
pub(crate) struct Batch {
    pub(crate) events: Vec<(String, Bytes)>,
    pub(crate) next: Position,
    pub(crate) last_seal: Option<(u64, String)>,
}

/// Why a batch could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reading the spool: {0}")]
    Io(#[from] std::io::Error),
    /// The spool does not continue what was shipped: altered, cut or replaced.
    #[error("the spool's chain is broken: {0}")]
    Broken(String),
}

/// How far a read goes, and what it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading<'a> {
    /// At least this many events, when there are (with seal keys: on to the next seal).
    pub(crate) limit: usize,
    /// No record beyond this sequence number.
    pub(crate) through: u64,
    /// A sealed spool: every seal is checked with these keys (a seal that does not hold is a
    /// broken chain), and only events a seal read in this same read vouches for are returned.
    pub(crate) keys: Option<&'a SealKeys>,
    /// Keep the events (a check of the chain does not).
    pub(crate) keep_events: bool,
}

/// Events read past `limit` while looking for the seal that vouches for them, at most: the
/// writer seals every [`super::spool::SEAL_EVERY_RECORDS`] events, so this is never reached
/// on a spool it wrote.
const MAX_UNSEALED: usize = 4 * super::spool::SEAL_EVERY_RECORDS as usize;

/// A batch as it is gathered, from the files ([`read_batch`]) or from what the writer handed
/// over ([`take_handed`]): both end it by the same rules.
struct Gather<'a> {
    reading: Reading<'a>,
    batch: Batch,
    /// The position after the last record gathered.
    at: Position,
    /// Events gathered.
    count: usize,
    /// With keys: the events, and the position, as of the last seal.
    vouched: (usize, Position),
}

impl<'a> Gather<'a> {
    pub(crate) fn new(from: Position, reading: Reading<'a>) -> Gather<'a> {
        Gather {
            reading,
            batch: Batch {
                events: Vec::new(),
                next: from.clone(),
                last_seal: None,
            },
            at: from.clone(),
            count: 0,
            vouched: (0, from),
        }
    }

    /// Whether the batch holds what was asked for (with seal keys: on to the seal after the
    /// limit).
    pub(crate) fn enough(&self) -> bool {
        self.count >= self.reading.limit
            && (self.reading.keys.is_none() || self.vouched.0 == self.count)
    }

    /// The position after a record: record `seq`, hashed `hash`, ends at `end` in `segment`.
    /// Called for each record before [`Gather::event`] or [`Gather::seal`].
    pub(crate) fn record(&mut self, segment: u64, end: u64, seq: u64, hash: &str) {
        self.at.segment = segment;
        self.at.offset = end;
        self.at.seq = seq;
        self.at.head = Some(hash.to_owned());
    }

    /// An event, whose record (hashed `hash`) ends where `self.at` now stands.
    pub(crate) fn event(&mut self, hash: String, event: impl FnOnce() -> Bytes) {
        self.count += 1;
        if self.reading.keep_events {
            self.batch.events.push((hash.clone(), event()));
        }
        self.at.last_event = Some(hash);
    }

    /// A seal (checked, where it was read from the files), whose record ends where `self.at`
    /// now stands: it vouches for the events before it.
    pub(crate) fn seal(&mut self, seq: u64, jws: &str) {
        self.batch.last_seal = Some((seq, jws.to_owned()));
        self.vouched = (self.count, self.at.clone());
    }

    /// The batch: with seal keys, only what a seal gathered with it vouches for.
    pub(crate) fn finish(mut self) -> Batch {
        if self.reading.keys.is_some() {
            self.batch.events.truncate(self.vouched.0);
            self.batch.next = self.vouched.1;
        } else {
            self.batch.next = self.at;
        }
        self.batch
    }
}

/// The batch after `from` made of what the writer handed over ([`Handoff`]), by the rules
/// [`read_batch`] reads the files by, if what is held continues exactly from `from`; `None`
/// when it does not (the shipper is behind it, or at a start): then the files are read.
pub(crate) fn take_handed(
    handoff: &Handoff,
    from: &Position,
    reading: Reading<'_>,
) -> Option<Batch> {
    if from.segment == 0 {
        return None;
    }
    // On to the seal after the limit: the writer seals at least every SEAL_EVERY_RECORDS.
    let max = reading
        .limit
        .saturating_add(2 * super::spool::SEAL_EVERY_RECORDS as usize);
    let records = handoff.after(from.seq, from.head.as_deref()?, max)?;
    let mut gather = Gather::new(from.clone(), reading);
    for record in &records {
        if gather.enough() || record.seq > reading.through {
            break;
        }
        gather.record(record.segment, record.end, record.seq, &record.hash);
        match &record.kind {
            HandedKind::Event(event) => gather.event(record.hash.clone(), || event.clone()),
            // As read from the files: a seal vouches only where seals are checked.
            HandedKind::Seal(jws) if reading.keys.is_some() => gather.seal(record.seq, jws),
            HandedKind::Seal(_) => {}
        }
    }
    Some(gather.finish())
}

/// Reads the records after `from`, none beyond `reading.through`, up to `reading.limit`
/// events. Every line must continue the chain from `from` (sequence number, the previous
/// record's hash, segment headers). With seal keys the read ends at a seal it checked: what
/// it returns was vouched for by a seal in the bytes it read itself (no window between a check
/// and a later read).
pub(crate) fn read_batch(
    dir: &Path,
    from: Position,
    reading: Reading<'_>,
) -> Result<Batch, ReadError> {
    let mut gather = Gather::new(from, reading);
    if gather.at.segment == 0 {
        match segments(dir)?.first() {
            Some((number, _)) => {
                gather.at = Position {
                    segment: *number,
                    ..Position::default()
                }
            }
            None => return Ok(gather.finish()),
        }
    }
    loop {
        // The writer starts segment N+1 only when N is complete: if N+1 exists before N is
        // read to its end, that read sees all of N.
        let next_exists = dir.join(segment_name(gather.at.segment + 1)).exists();
        let mut file = std::fs::File::open(dir.join(segment_name(gather.at.segment)))?;
        file.seek(SeekFrom::Start(gather.at.offset))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        loop {
            if gather.enough() {
                return Ok(gather.finish());
            }
            if reading.keys.is_some() && gather.count - gather.vouched.0 >= MAX_UNSEALED {
                return Err(ReadError::Broken(format!(
                    "{MAX_UNSEALED} records after record {} without a seal: the writer seals every {} (records written before sealing was turned on cannot be vouched for)",
                    gather.vouched.1.seq,
                    super::spool::SEAL_EVERY_RECORDS
                )));
            }
            let read = read_line(&mut reader, &mut line)?;
            if read == 0 || !line.ends_with(b"\n") {
                break;
            }
            let body = &line[..line.len() - 1];
            let at = &mut gather.at;
            if at.offset == 0 {
                let header: SegmentHeader = serde_json::from_slice(body).map_err(|e| {
                    ReadError::Broken(format!("segment {}: header: {e}", at.segment))
                })?;
                let continues = header.segment == at.segment
                    && (at.seq == 0 || header.first_seq == at.seq + 1)
                    && at.head.as_ref().is_none_or(|head| *head == header.head);
                if !continues {
                    return Err(ReadError::Broken(format!(
                        "segment {} does not continue from record {}",
                        at.segment, at.seq
                    )));
                }
                at.head = Some(header.head);
                at.offset += read as u64;
                continue;
            }
            let record = RecordLine::parse(body)
                .map_err(|e| ReadError::Broken(format!("record after {}: {e}", at.seq)))?;
            if record.seq > reading.through {
                break;
            }
            if (at.seq != 0 && record.seq != at.seq + 1)
                || at.head.as_ref().is_some_and(|head| *head != record.prev)
            {
                return Err(ReadError::Broken(format!(
                    "record {} does not follow record {}",
                    record.seq, at.seq
                )));
            }
            let hash = sha256_hex(body);
            let end = at.offset + read as u64;
            gather.record(gather.at.segment, end, record.seq, &hash);
            match (record.event, record.seal, reading.keys) {
                (Some(event), _, _) => {
                    gather.event(hash, || Bytes::copy_from_slice(event.get().as_bytes()));
                }
                (None, Some(jws), Some(keys)) => {
                    let seal = keys.check(jws).map_err(|problem| {
                        ReadError::Broken(format!("seal {}: {problem}", record.seq))
                    })?;
                    if seal.seq != record.seq || seal.prev != record.prev {
                        return Err(ReadError::Broken(format!(
                            "seal {} was made for another place",
                            record.seq
                        )));
                    }
                    gather.seal(record.seq, jws);
                }
                (None, _, _) => {}
            }
        }
        if !next_exists || gather.at.seq >= reading.through {
            return Ok(gather.finish());
        }
        gather.at = Position {
            segment: gather.at.segment + 1,
            offset: 0,
            ..gather.at
        };
    }
}

/// The segments numbered below `shipped_to` (every record in them acknowledged) whose last
/// write is at least `keep` old, oldest first, up to the first one still kept, so that what
/// stays is one unbroken run of segments.
pub(crate) fn deletable(
    dir: &Path,
    shipped_to: u64,
    keep: Duration,
) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for (number, path) in segments(dir)? {
        if number >= shipped_to {
            break;
        }
        let age = std::fs::metadata(&path)?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        if age < keep {
            break;
        }
        found.push((number, path));
    }
    Ok(found)
}

/// The length of segment `number`'s header line, with its newline.
pub(crate) fn header_len(dir: &Path, number: u64) -> Option<u64> {
    let file = std::fs::File::open(dir.join(segment_name(number))).ok()?;
    let mut line = Vec::new();
    BufReader::new(file.take(4096))
        .read_until(b'\n', &mut line)
        .ok()?;
    line.ends_with(b"\n").then_some(line.len() as u64)
}

/// The sequence number of the first record of segment `number` (from its header).
pub(crate) fn first_seq_of(dir: &Path, number: u64) -> std::io::Result<u64> {
    let file = std::fs::File::open(dir.join(segment_name(number)))?;
    let mut line = Vec::new();
    BufReader::new(file.take(4096)).read_until(b'\n', &mut line)?;
    serde_json::from_slice::<SegmentHeader>(line.trim_ascii_end())
        .map(|header| header.first_seq)
        .map_err(std::io::Error::other)
}

/// Deletes `segments` (from [`deletable`]), oldest first; returns how many went.
pub(crate) fn delete(dir: &Path, segments: &[(u64, PathBuf)]) -> std::io::Result<u64> {
    let mut deleted = 0;
    for (_, path) in segments {
        std::fs::remove_file(path)?;
        deleted += 1;
    }
    if deleted > 0 {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(deleted)
}

/// Checks that `at` is a record boundary of the chain in `dir` (its sequence number and hash as
/// read from the spool), and returns that boundary as read: its segment and offset from the
/// files (not from `at`, whose offset is not checked), and the hash of the last event at or
/// before it that is still in the spool. `None`: nothing was shipped, the spool's beginning.
pub(crate) fn position_holds(dir: &Path, at: &Position) -> Result<Option<Position>, String> {
    if at.seq == 0 {
        // Nothing shipped: the position is the spool's very beginning, record 1 next.
        let first = segments(dir)
            .map_err(|e| e.to_string())?
            .first()
            .map(|(n, _)| *n);
        let from_start = (at.segment == 0 && at.offset == 0)
            || (Some(at.segment) == first
                && first_seq_of(dir, at.segment).ok() == Some(1)
                && (at.offset == 0 || Some(at.offset) == header_len(dir, at.segment)));
        if !from_start {
            return Err(
                "shipped.json says nothing was shipped, yet names a place past the spool's beginning: the position was altered".into(),
            );
        }
        return Ok(None);
    }
    if at.head.is_none() {
        return Err(format!(
            "shipped.json names record {} without its hash: the position was altered",
            at.seq
        ));
    }
    let reading = Reading {
        limit: usize::MAX,
        through: at.seq,
        keys: None,
        keep_events: false,
    };
    let read = read_batch(dir, Position::default(), reading).map_err(|e| e.to_string())?;
    let next = read.next;
    // The boundary is the record and its hash; where it lies in the files is taken from them.
    let matches = next.seq == at.seq
        && at
            .head
            .as_ref()
            .is_none_or(|head| next.head.as_ref() == Some(head));
    if !matches {
        return Err(format!(
            "shipped.json says shipping reached record {}; the spool's chain does not hold that record with that hash (it reaches record {}): the position was altered",
            at.seq, next.seq
        ));
    }
    Ok(Some(next))
}
