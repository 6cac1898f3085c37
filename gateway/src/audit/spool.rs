//! The durable audit spool: append-only segment files of JSON lines, each record carrying the
//! SHA-256 of the record before it (a hash chain), each segment opening with the chain head it
//! continues from. A record is on disk (written and `fdatasync`ed) before
//! [`Spool::append`] returns, and one dedicated thread writes and syncs for all requests
//! waiting at that moment (group commit), so throughput does not pay one fsync per request.
//!
//! Layout of `segment-0000000001.jsonl`:
//! ```text
//! {"segment":1,"first_seq":1,"head":"000…000"}
//! {"seq":1,"prev":"000…000","event":{…AuditEvent…}}
//! {"seq":2,"prev":"<sha256 of line 2>","event":{…}}
//! ```
//! The hash of a record is the SHA-256 of its line without the newline. A crash can leave the
//! last line cut short: such a line was never acknowledged, so it is cut off at start.
//!
//! With a seal key the writer also writes seals, chain records of their own that sign their
//! place in the chain (`{"seq":9,"prev":"…","seal":"<JWS>"}`, see [`super::seal`]): when it
//! opens, at least every `seal_every` (in the same group commit when requests are writing, on
//! its own when idle), before shipped segments are pruned, and when it closes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::seal::{Before, Marks, Seal, SealKind, Sealer};

/// The chain head before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The most records written in one group commit.
const MAX_BATCH: usize = 4096;
/// A sealed spool seals at least once every this many events (and every `seal_every`), so the
/// shipper, which ships only what a seal vouches for, never reads far for one.
pub(crate) const SEAL_EVERY_RECORDS: u64 = 1000;

/// Why the spool could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// Writing or syncing failed (disk full, I/O error).
    #[error("the audit spool could not be written: {0}")]
    Write(String),
    /// The writer thread is gone.
    #[error("the audit spool writer has stopped")]
    Stopped,
    /// The spool on disk is not one this version can continue.
    #[error("the audit spool in {0} cannot be continued: {1}")]
    Corrupt(String, String),
}

/// A segment's first line.
#[derive(Debug, Deserialize)]
pub(crate) struct SegmentHeader {
    pub(crate) segment: u64,
    pub(crate) first_seq: u64,
    pub(crate) head: String,
    /// The chain's id (absent in spools from before chains had one).
    #[serde(default)]
    pub(crate) chain: Option<String>,
}

/// A record line: an event (left unparsed) or a seal.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordLine<'a> {
    pub(crate) seq: u64,
    pub(crate) prev: String,
    #[serde(borrow, default)]
    pub(crate) event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) seal: Option<&'a str>,
}

impl RecordLine<'_> {
    /// Reads a record line: exactly one of an event or a seal.
    pub(crate) fn parse(body: &[u8]) -> Result<RecordLine<'_>, String> {
        let record: RecordLine<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if record.event.is_some() == record.seal.is_some() {
            return Err("a record holds an event or a seal".into());
        }
        Ok(record)
    }
}

/// The name of segment `number`.
pub(crate) fn segment_name(number: u64) -> String {
    format!("segment-{number:010}.jsonl")
}

/// The segment files in `dir`, in order: (number, path).
pub(crate) fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        // Exactly the names the writer gives: ten digits, no sign, no other spelling.
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .filter(|n| n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        // A symbolic link, a FIFO or a folder by that name is not a segment (reading a FIFO
        // would hang): the writer never makes one, so its absence shows as a gap.
        if !entry.file_type()?.is_file() {
            continue;
        }
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Creates `path` anew for writing: whatever is there (a file left by a crash, or a symbolic
/// link planted to make the gateway write elsewhere) is removed first, and the file is created
/// exclusively, so a link put there in between is not followed either.
pub(crate) fn create_fresh(path: &Path) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    OpenOptions::new().write(true).create_new(true).open(path)
}

/// Opens the spool's lock file, making it when it is missing, or is not a plain file (a
/// symbolic link or a FIFO someone put there).
fn open_lock(path: &Path) -> std::io::Result<File> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => OpenOptions::new().write(true).open(path),
        Ok(_) | Err(_) => create_fresh(path),
    }
}

/// The longest line a spool holds (an AuditEvent is a few KiB).
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// Reads one line (with its newline, if it has one) into `line`, at most [`MAX_LINE`] bytes: a
/// longer one is not a spool line.
pub(crate) fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<usize> {
    line.clear();
    let read = reader.take(MAX_LINE).read_until(b'\n', line)?;
    if read as u64 == MAX_LINE && !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a line longer than 16 MiB",
        ));
    }
    Ok(read)
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for byte in digest.as_ref() {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 15)]));
    }
    out
}

/// Work waiting for the writer, and where to say it is durable (with the last sequence
/// number written for it).
struct Job {
    work: Work,
    done: oneshot::Sender<Result<u64, SpoolError>>,
}

enum Work {
    /// Serialized AuditEvents.
    Append(Vec<Vec<u8>>),
    /// A `prune` seal: records before this one may go; the unclean restarts to carry on.
    Prune(u64, Vec<u64>),
    /// A `close` seal; appends after it are refused.
    Close,
    /// A `seal` now (the shipper wants what is written vouched for).
    Seal,
}

/// One line to write.
enum Entry<'a> {
    Event(&'a [u8]),
    Seal(SealKind, Marks),
}

/// The spool's handle; cheap to clone, shared by every request.
#[derive(Debug, Clone)]
pub struct Spool {
    // Declared before `_writer`: dropping the last handle closes the queue first, so the
    // writer thread ends, and then waits for it (releasing the spool's lock).
    jobs: mpsc::Sender<Job>,
    _writer: Arc<WriterThread>,
    dir: PathBuf,
    written: Arc<AtomicU64>,
    sealed: bool,
    chain: String,
}

/// The writer thread, joined when the last [`Spool`] handle goes.
#[derive(Debug)]
struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, cutting off a record a crash left unfinished,
    /// and starts its writer thread. Segments roll over at `segment_bytes`. With a `sealer`,
    /// the spool is sealed (an `open` seal is durable when this returns).
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        sealer: Option<Arc<Sealer>>,
    ) -> Result<Spool, SpoolError> {
        let sealed = sealer.is_some();
        let writer = Writer::open(dir, segment_bytes, sealer)?;
        let chain = writer.chain.clone();
        let written = Arc::new(AtomicU64::new(writer.next_seq.saturating_sub(1)));
        let (jobs, queue) = mpsc::channel::<Job>();
        let counter = written.clone();
        let thread = std::thread::Builder::new()
            .name("audit-spool".into())
            .spawn(move || writer.run(queue, &counter))
            .map_err(|e| SpoolError::Write(e.to_string()))?;
        Ok(Spool {
            jobs,
            _writer: Arc::new(WriterThread(Some(thread))),
            dir: dir.to_owned(),
            written,
            sealed,
            chain,
        })
    }

    /// The chain's id: chosen at random when the spool began, kept in every segment header
    /// and signed into every seal.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Appends `events` (serialized AuditEvents) and returns the last one's sequence number
    /// once they are durable.
    pub async fn append(&self, events: Vec<Vec<u8>>) -> Result<u64, SpoolError> {
        self.submit(Work::Append(events)).await
    }

    /// Writes a `prune` seal allowing the records before `first_kept_seq` to be deleted (when
    /// the spool is sealed; otherwise nothing), durable when this returns. Refused once the
    /// spool is closed.
    pub async fn seal_prune(
        &self,
        first_kept_seq: u64,
        unclean: Vec<u64>,
    ) -> Result<u64, SpoolError> {
        self.submit(Work::Prune(first_kept_seq, unclean)).await
    }

    /// Writes a `seal` now (on a sealed spool; otherwise nothing), durable when this returns.
    pub async fn seal_now(&self) -> Result<u64, SpoolError> {
        self.submit(Work::Seal).await
    }

    /// Closes the spool: a `close` seal when it is sealed, and every later append is refused.
    pub async fn close(&self) -> Result<u64, SpoolError> {
        self.submit(Work::Close).await
    }

    /// Whether the writer seals the chain.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    async fn submit(&self, work: Work) -> Result<u64, SpoolError> {
        let (done, durable) = oneshot::channel();
        self.jobs
            .send(Job { work, done })
            .map_err(|_| SpoolError::Stopped)?;
        durable.await.map_err(|_| SpoolError::Stopped)?
    }

    /// The spool's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number of the last durable record, kept current by the writer.
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }
}

/// The writer thread's state: the open segment and the chain's end.
struct Writer {
    /// Held while the process lives: one writer per spool.
    _lock: Arc<File>,
    dir: PathBuf,
    segment_bytes: u64,
    segment: u64,
    file: File,
    size: u64,
    next_seq: u64,
    head: String,
    /// Set after a failed write: the file's end is re-read before the next one.
    damaged: bool,
    /// After [`Spool::close`] nothing more is written.
    closed: bool,
    seals: Option<Seals>,
    /// The chain's id.
    chain: String,
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
    fn open(
        dir: &Path,
        segment_bytes: u64,
        sealer: Option<Arc<Sealer>>,
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
                )?,
                Before::New,
            ),
            Some((number, path)) => Writer::resume(lock, dir, segment_bytes, number, &path)?,
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
        number: u64,
        path: &Path,
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

    fn run(mut self, queue: mpsc::Receiver<Job>, written: &AtomicU64) {
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
            )?;
            (next.seals, next.closed) = (self.seals.take(), self.closed);
            *self = next;
        }
        let mut buffer = Vec::new();
        let (mut seq, mut head) = (self.next_seq, self.head.clone());
        let mut sealed = None;
        let mut since = self.seals.as_ref().map_or(0, |s| s.since);
        for entry in entries {
            let start = buffer.len();
            buffer.extend_from_slice(format!("{{\"seq\":{seq},\"prev\":\"{head}\",").as_bytes());
            match entry {
                Entry::Event(event) => {
                    buffer.extend_from_slice(b"\"event\":");
                    buffer.extend_from_slice(event);
                    since += 1;
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
                }
            }
            buffer.push(b'}');
            head = sha256_hex(&buffer[start..]);
            buffer.push(b'\n');
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

impl Job {
    /// How many lines it adds (for the group's size limit).
    fn size(&self) -> usize {
        match &self.work {
            Work::Append(events) => events.len(),
            Work::Prune(..) | Work::Close | Work::Seal => 1,
        }
    }
}

/// What [`scan_tail`] found at the end of a segment.
struct Tail {
    next_seq: u64,
    head: String,
    /// The length of its complete, well-formed lines.
    good_len: u64,
    /// The kind of the last record, when it is a seal.
    last_seal: Option<SealKind>,
    /// The chain's id: from the header, or else from a seal.
    chain: Option<String>,
}

/// Reads a segment: the next sequence number, the chain head, and the length of its complete,
/// well-formed lines (what follows, a line without its newline, was never acknowledged).
fn scan_tail(path: &Path) -> Result<Tail, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let read = read_line(&mut reader, &mut line).map_err(|e| e.to_string())?;
    if read == 0 || !line.ends_with(b"\n") {
        return Err(format!("{}: no segment header", path.display()));
    }
    let header: SegmentHeader = serde_json::from_slice(&line[..line.len() - 1])
        .map_err(|e| format!("{}: bad segment header: {e}", path.display()))?;
    let mut tail = Tail {
        next_seq: header.first_seq,
        head: header.head,
        good_len: read as u64,
        last_seal: None,
        chain: header.chain,
    };
    loop {
        let read = read_line(&mut reader, &mut line).map_err(|e| e.to_string())?;
        if read == 0 || !line.ends_with(b"\n") {
            break;
        }
        let body = &line[..line.len() - 1];
        let record = RecordLine::parse(body).map_err(|e| {
            format!(
                "{}: record {} is not readable ({e}); run `portvagt audit verify`",
                path.display(),
                tail.next_seq
            )
        })?;
        if record.seq != tail.next_seq || record.prev != tail.head {
            return Err(format!(
                "{}: the chain breaks at record {}; run `portvagt audit verify`",
                path.display(),
                tail.next_seq
            ));
        }
        let seal = record.seal.and_then(Seal::peek);
        if let Some(seal) = &seal
            && tail.chain.is_none()
            && !seal.chain.is_empty()
        {
            tail.chain = Some(seal.chain.clone());
        }
        tail.last_seal = seal.map(|seal| seal.kind);
        tail.head = sha256_hex(body);
        tail.next_seq += 1;
        tail.good_len += read as u64;
    }
    Ok(tail)
}
