//! The writer thread: takes the queued work in groups, writes events and seals to the open
//! segment with one sync per group (group commit), rolls segments over, and continues a spool a
//! crash left. It is the only code that writes the chain; requests reach it only through the
//! queue of [`super::Spool`].

use std::fs::{File, OpenOptions};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use bytes::Bytes;

use super::super::seal::{Before, Marks, SealKind, Sealer};
use super::files::{create_fresh, open_lock, scan_tail, segment_name, segments, sha256_hex};
use super::handoff::{Handed, HandedKind, Handoff};
use super::{GENESIS, Job, SEAL_EVERY_RECORDS, SpoolError, Work};

/// The most records written in one group commit.
const MAX_BATCH: usize = 4096;

/// One line to write.
enum Entry<'a> {
    Event(&'a Bytes),
    Seal(SealKind, Marks),
}

/// The writer thread's state: the open segment and the chain's end.
pub(super) struct Writer {
    /// Held while the process lives: one writer per spool.
    _lock: Arc<File>,
    dir: PathBuf,
    segment_bytes: u64,
    segment: u64,
    file: File,
    size: u64,
    pub(super) next_seq: u64,
    head: String,
    /// Set after a failed write: the file's end is re-read before the next one.
    damaged: bool,
    /// After [`super::Spool::close`] nothing more is written.
    closed: bool,
    seals: Option<Seals>,
    /// The chain's id.
    pub(super) chain: String,
    /// Where durable records go for the shipper, when it wants them.
    handoff: Arc<Handoff>,
}

/// A sealed spool's sealing state.
struct Seals {
    sealer: Arc<Sealer>,
    /// When the last seal was written (or tried).
    last: Instant,
    /// Events written since the last seal.
    since: u64,
}

/// What the writer does next.
enum Next {
    Job(Job),
    SealDue,
    Ended,
}

impl Writer {
    pub(super) fn open(
        dir: &Path,
        segment_bytes: u64,
        sealer: Option<Arc<Sealer>>,
        handoff: Arc<Handoff>,
    ) -> Result<Writer, SpoolError> {
        let corrupt = |message: String| SpoolError::Corrupt(dir.display().to_string(), message);
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Write(e.to_string()))?;
        let lock =
            open_lock(&dir.join("spool.lock")).map_err(|e| SpoolError::Write(e.to_string()))?;
        lock.try_lock().map_err(|_| {
            corrupt("another process is writing this spool (spool.lock is held)".into())
        })?;
        let lock = Arc::new(lock);
        // A segment still being staged when the process died never held a record.
        for entry in std::fs::read_dir(dir).map_err(|e| SpoolError::Write(e.to_string()))? {
            let path = entry.map_err(|e| SpoolError::Write(e.to_string()))?.path();
            if path.extension().is_some_and(|e| e == "new") {
                std::fs::remove_file(&path).map_err(|e| SpoolError::Write(e.to_string()))?;
            }
        }
        let existing = segments(dir).map_err(|e| SpoolError::Write(e.to_string()))?;
        let (mut writer, before) = match existing.last().cloned() {
            None => (
                Writer::start_segment(
                    lock,
                    dir,
                    segment_bytes,
                    (1, 1, GENESIS.to_owned()),
                    uuid::Uuid::new_v4().simple().to_string(),
                    handoff,
                )?,
                Before::New,
            ),
            Some((number, path)) => {
                Writer::resume(lock, dir, segment_bytes, (number, &path), handoff)?
            }
        };
        if let Some(sealer) = sealer {
            writer.seals = Some(Seals {
                sealer,
                last: Instant::now(),
                since: 0,
            });
            let marks = Marks {
                before: Some(before),
                ..Marks::default()
            };
            writer.commit(&[Entry::Seal(SealKind::Open, marks)])?;
        }
        Ok(writer)
    }

    /// Continues the last segment, cutting off a record a crash left unfinished; says how the
    /// run before ended.
    fn resume(
        lock: Arc<File>,
        dir: &Path,
        segment_bytes: u64,
        (number, path): (u64, &Path),
        handoff: Arc<Handoff>,
    ) -> Result<(Writer, Before), SpoolError> {
        let corrupt = |message: String| SpoolError::Corrupt(dir.display().to_string(), message);
        let tail = scan_tail(path).map_err(corrupt)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| SpoolError::Write(e.to_string()))?;
        let size = file
            .metadata()
            .map_err(|e| SpoolError::Write(e.to_string()))?
            .len();
        if size != tail.good_len {
            // A record cut short by a crash: never acknowledged, so never part of the chain.
            tracing::warn!(
                segment = %path.display(),
                bytes = size - tail.good_len,
                "audit spool: cutting off an unfinished record"
            );
            file.set_len(tail.good_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| SpoolError::Write(e.to_string()))?;
        }
        let before = match tail.last_seal {
            Some(SealKind::Close) => Before::Closed,
            _ if tail.next_seq == 1 => Before::New,
            _ => Before::Unclosed,
        };
        let writer = Writer {
            _lock: lock,
            dir: dir.to_owned(),
            segment_bytes,
            segment: number,
            file,
            size: tail.good_len,
            next_seq: tail.next_seq,
            head: tail.head,
            damaged: false,
            closed: false,
            seals: None,
            // A spool from before chains had ids gets one now.
            chain: tail
                .chain
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            handoff,
        };
        Ok((writer, before))
    }

    /// Starts segment `number` at record `first_seq` after `head` (`at`).
    fn start_segment(
        lock: Arc<File>,
        dir: &Path,
        segment_bytes: u64,
        at: (u64, u64, String),
        chain: String,
        handoff: Arc<Handoff>,
    ) -> Result<Writer, SpoolError> {
        let (number, first_seq, head) = at;
        let io = |e: std::io::Error| SpoolError::Write(e.to_string());
        let path = dir.join(segment_name(number));
        // Written aside and renamed into place: a segment file either has its header or does
        // not exist, whatever fails (disk full) or crashes in between.
        let staging = dir.join(format!("{}.new", segment_name(number)));
        // The chain id is hex from a UUID: nothing in it needs escaping.
        let header = format!(
            "{{\"segment\":{number},\"first_seq\":{first_seq},\"head\":\"{head}\",\"chain\":\"{chain}\"}}\n"
        );
        {
            let mut staged = create_fresh(&staging).map_err(io)?;
            staged.write_all(header.as_bytes()).map_err(io)?;
            staged.sync_all().map_err(io)?;
        }
        if path.exists() {
            return Err(SpoolError::Write(format!(
                "{} exists already",
                path.display()
            )));
        }
        std::fs::rename(&staging, &path).map_err(io)?;
        // The new file's name must survive a crash too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(Writer {
            _lock: lock,
            dir: dir.to_owned(),
            segment_bytes,
            segment: number,
            file,
            size: header.len() as u64,
            next_seq: first_seq,
            head,
            damaged: false,
            closed: false,
            seals: None,
            chain,
            handoff,
        })
    }

    /// The next job; or that a seal is due (a sealed spool seals while idle, too); or that
    /// every handle is gone.
    fn next(&self, queue: &mpsc::Receiver<Job>) -> Next {
        match &self.seals {
            Some(seals) if !self.closed => {
                let due = seals.last + seals.sealer.every();
                match queue.recv_timeout(due.saturating_duration_since(Instant::now())) {
                    Ok(job) => Next::Job(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => Next::SealDue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Next::Ended,
                }
            }
            _ => queue.recv().map_or(Next::Ended, Next::Job),
        }
    }

    /// Whether `seal_every` has passed since the last seal (the bound on events between
    /// seals is kept where events are added, in [`Writer::serve`]).
    fn seal_due(&self) -> bool {
        !self.closed
            && self
                .seals
                .as_ref()
                .is_some_and(|s| s.last.elapsed() >= s.sealer.every())
    }

    pub(super) fn run(mut self, queue: mpsc::Receiver<Job>, written: &AtomicU64) {
        loop {
            let first = match self.next(&queue) {
                Next::Job(job) => job,
                Next::SealDue => {
                    self.write_alone(SealKind::Seal, written);
                    continue;
                }
                Next::Ended => break,
            };
            let mut jobs = vec![first];
            let mut count = jobs[0].size();
            while count < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => {
                        count += job.size();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.serve(jobs, written);
        }
        // Every handle is gone: nothing can be appended any more, which is a clean end.
        if self.seals.is_some() && !self.closed {
            self.write_alone(SealKind::Close, written);
        }
    }

    /// Writes one group of jobs (and a seal, when one is due) and answers each job.
    fn serve(&mut self, jobs: Vec<Job>, written: &AtomicU64) {
        let sealed = self.seals.is_some();
        let mut closing = self.closed;
        // Events since the last seal: a seal goes before the event that would pass the bound.
        let mut since = self.seals.as_ref().map_or(0, |s| s.since);
        let mut entries = Vec::new();
        // Per job: the number of entries up to its own last one, or refused (after a close).
        let mut ends = Vec::with_capacity(jobs.len());
        for job in &jobs {
            match &job.work {
                Work::Append(_) | Work::Prune(..) | Work::Seal if closing => {
                    ends.push(None);
                    continue;
                }
                Work::Append(events) => {
                    for event in events {
                        if sealed && since >= SEAL_EVERY_RECORDS {
                            entries.push(Entry::Seal(SealKind::Seal, Marks::default()));
                            since = 0;
                        }
                        entries.push(Entry::Event(event));
                        since += 1;
                    }
                }
                Work::Prune(first_kept, unclean) if sealed && !closing => {
                    let marks = Marks {
                        first_kept_seq: Some(*first_kept),
                        unclean: unclean.clone(),
                        ..Marks::default()
                    };
                    entries.push(Entry::Seal(SealKind::Prune, marks));
                }
                Work::Close if sealed && !closing => {
                    entries.push(Entry::Seal(SealKind::Close, Marks::default()));
                    closing = true;
                }
                Work::Seal if sealed => {
                    entries.push(Entry::Seal(SealKind::Seal, Marks::default()));
                }
                Work::Close => closing = true,
                Work::Prune(..) | Work::Seal => {}
            }
            ends.push(Some(entries.len()));
        }
        if !closing && self.seal_due() {
            entries.push(Entry::Seal(SealKind::Seal, Marks::default()));
        }
        let start = self.next_seq;
        let outcome = if entries.is_empty() {
            Ok(())
        } else {
            self.commit(&entries)
        };
        match &outcome {
            Ok(()) => {
                written.store(self.next_seq.saturating_sub(1), Ordering::Relaxed);
                self.closed |= closing;
            }
            Err(error) => tracing::error!(%error, "audit spool write failed"),
        }
        for (job, end) in jobs.into_iter().zip(ends) {
            let answer = match end {
                None => Err(SpoolError::Stopped),
                Some(end) => outcome
                    .clone()
                    .map(|()| (start + end as u64).saturating_sub(1)),
            };
            let _ = job.done.send(answer);
        }
    }

    /// Writes one seal on its own (idle, or at the end); a failure is logged, and tried again
    /// one interval later.
    fn write_alone(&mut self, kind: SealKind, written: &AtomicU64) {
        match self.commit(&[Entry::Seal(kind, Marks::default())]) {
            Ok(()) => written.store(self.next_seq.saturating_sub(1), Ordering::Relaxed),
            Err(error) => {
                tracing::error!(%error, "audit spool: writing a seal failed");
                if let Some(seals) = &mut self.seals {
                    seals.last = Instant::now();
                }
            }
        }
    }

    /// Writes and syncs one group of lines.
    fn commit(&mut self, entries: &[Entry<'_>]) -> Result<(), SpoolError> {
        let io = |e: std::io::Error| SpoolError::Write(e.to_string());
        if self.damaged {
            // Back to the end of the last group that was durable: records of a failed group
            // were answered 503 and are not part of the trail, even if some bytes reached the
            // disk (and after a failed fsync, the page cache is not to be trusted).
            self.file.set_len(self.size).map_err(io)?;
            self.file.sync_all().map_err(io)?;
            self.file.seek(SeekFrom::End(0)).map_err(io)?;
            self.damaged = false;
        }
        if self.size >= self.segment_bytes {
            // The new segment first; only when it stands does it replace the old one (a
            // failure leaves this writer, its seals included, as it was).
            let mut next = Writer::start_segment(
                self._lock.clone(),
                &self.dir,
                self.segment_bytes,
                (self.segment + 1, self.next_seq, self.head.clone()),
                self.chain.clone(),
                self.handoff.clone(),
            )?;
            (next.seals, next.closed) = (self.seals.take(), self.closed);
            *self = next;
        }
        let mut buffer = Vec::new();
        let (mut seq, mut head) = (self.next_seq, self.head.clone());
        let mut sealed = None;
        let mut since = self.seals.as_ref().map_or(0, |s| s.since);
        // Kept for the shipper (when it wants them), handed over once durable.
        let handing = self.handoff.wanted();
        let mut handed = Vec::new();
        for entry in entries {
            let start = buffer.len();
            buffer.extend_from_slice(format!("{{\"seq\":{seq},\"prev\":\"{head}\",").as_bytes());
            let kind = match entry {
                Entry::Event(event) => {
                    buffer.extend_from_slice(b"\"event\":");
                    buffer.extend_from_slice(event);
                    since += 1;
                    // The same bytes, shared: no copy.
                    handing.then(|| HandedKind::Event(Bytes::clone(event)))
                }
                Entry::Seal(kind, marks) => {
                    let sealer = &self.seals.as_ref().ok_or(SpoolError::Stopped)?.sealer;
                    let jws = sealer
                        .sign(&self.chain, *kind, seq, &head, marks)
                        .map_err(SpoolError::Write)?;
                    // A compact JWS is base64url and dots: nothing in it needs escaping.
                    buffer.extend_from_slice(format!("\"seal\":\"{jws}\"").as_bytes());
                    sealed = Some(*kind);
                    since = 0;
                    handing.then(|| HandedKind::Seal(jws))
                }
            };
            buffer.push(b'}');
            let hash = sha256_hex(&buffer[start..]);
            buffer.push(b'\n');
            let prev = std::mem::replace(&mut head, hash);
            if let Some(kind) = kind {
                handed.push(Handed {
                    seq,
                    prev,
                    hash: head.clone(),
                    segment: self.segment,
                    end: self.size + buffer.len() as u64,
                    kind,
                });
            }
            seq += 1;
        }
        let written = self
            .file
            .write_all(&buffer)
            .and_then(|()| self.file.sync_data());
        if let Err(error) = written {
            self.damaged = true;
            return Err(io(error));
        }
        self.size += buffer.len() as u64;
        (self.next_seq, self.head) = (seq, head);
        if !handed.is_empty() {
            self.handoff.add(handed);
        }
        if let Some(seals) = &mut self.seals {
            seals.since = since;
            if let Some(kind) = sealed {
                seals.last = Instant::now();
                self.closed |= kind == SealKind::Close;
            }
        }
        Ok(())
    }
}
