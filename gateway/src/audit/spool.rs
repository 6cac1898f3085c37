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

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

/// The chain head before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The most records written in one group commit.
const MAX_BATCH: usize = 4096;

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
}

/// A record line, with its event left unparsed.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordLine<'a> {
    pub(crate) seq: u64,
    pub(crate) prev: String,
    #[serde(borrow)]
    pub(crate) event: &'a RawValue,
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
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
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

/// Records waiting for the writer, and where to say they are durable.
struct Job {
    events: Vec<Vec<u8>>,
    done: oneshot::Sender<Result<u64, SpoolError>>,
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
    /// and starts its writer thread. Segments roll over at `segment_bytes`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Spool, SpoolError> {
        let writer = Writer::open(dir, segment_bytes)?;
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
        })
    }

    /// Appends `events` (serialized AuditEvents) and returns the last one's sequence number
    /// once they are durable.
    pub async fn append(&self, events: Vec<Vec<u8>>) -> Result<u64, SpoolError> {
        let (done, durable) = oneshot::channel();
        self.jobs
            .send(Job { events, done })
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
}

impl Writer {
    fn open(dir: &Path, segment_bytes: u64) -> Result<Writer, SpoolError> {
        let corrupt = |message: String| SpoolError::Corrupt(dir.display().to_string(), message);
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Write(e.to_string()))?;
        let lock =
            File::create(dir.join("spool.lock")).map_err(|e| SpoolError::Write(e.to_string()))?;
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
        let Some((number, path)) = existing.last().cloned() else {
            return Writer::start_segment(lock, dir, segment_bytes, 1, 1, GENESIS.to_owned());
        };
        let (next_seq, head, good_len) = scan_tail(&path).map_err(corrupt)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| SpoolError::Write(e.to_string()))?;
        let size = file
            .metadata()
            .map_err(|e| SpoolError::Write(e.to_string()))?
            .len();
        if size != good_len {
            // A record cut short by a crash: never acknowledged, so never part of the chain.
            tracing::warn!(
                segment = %path.display(),
                bytes = size - good_len,
                "audit spool: cutting off an unfinished record"
            );
            file.set_len(good_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| SpoolError::Write(e.to_string()))?;
        }
        Ok(Writer {
            _lock: lock,
            dir: dir.to_owned(),
            segment_bytes,
            segment: number,
            file,
            size: good_len,
            next_seq,
            head,
            damaged: false,
        })
    }

    fn start_segment(
        lock: Arc<File>,
        dir: &Path,
        segment_bytes: u64,
        number: u64,
        first_seq: u64,
        head: String,
    ) -> Result<Writer, SpoolError> {
        let io = |e: std::io::Error| SpoolError::Write(e.to_string());
        let path = dir.join(segment_name(number));
        // Written aside and renamed into place: a segment file either has its header or does
        // not exist, whatever fails (disk full) or crashes in between.
        let staging = dir.join(format!("{}.new", segment_name(number)));
        let header =
            format!("{{\"segment\":{number},\"first_seq\":{first_seq},\"head\":\"{head}\"}}\n");
        {
            let mut staged = File::create(&staging).map_err(io)?;
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
        })
    }

    fn run(mut self, queue: mpsc::Receiver<Job>, written: &AtomicU64) {
        while let Ok(first) = queue.recv() {
            let mut jobs = vec![first];
            let mut count = jobs[0].events.len();
            while count < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => {
                        count += job.events.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let outcome = self.commit(&jobs);
            match &outcome {
                Ok(()) => written.store(self.next_seq.saturating_sub(1), Ordering::Relaxed),
                Err(error) => tracing::error!(%error, "audit spool write failed"),
            }
            // Each job learns its own last sequence number.
            let mut seq = self.next_seq.saturating_sub(count as u64);
            for job in jobs {
                seq += job.events.len() as u64;
                let answer = outcome.clone().map(|()| seq.saturating_sub(1));
                let _ = job.done.send(answer);
            }
        }
    }

    /// Writes and syncs one group of records.
    fn commit(&mut self, jobs: &[Job]) -> Result<(), SpoolError> {
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
            *self = Writer::start_segment(
                self._lock.clone(),
                &self.dir,
                self.segment_bytes,
                self.segment + 1,
                self.next_seq,
                self.head.clone(),
            )?;
        }
        let mut buffer = Vec::new();
        let (mut seq, mut head) = (self.next_seq, self.head.clone());
        for event in jobs.iter().flat_map(|job| job.events.iter()) {
            let start = buffer.len();
            buffer.extend_from_slice(
                format!("{{\"seq\":{seq},\"prev\":\"{head}\",\"event\":").as_bytes(),
            );
            buffer.extend_from_slice(event);
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
        Ok(())
    }
}

/// Reads a segment: the next sequence number, the chain head, and the length of its complete,
/// well-formed lines (what follows, a line without its newline, was never acknowledged).
fn scan_tail(path: &Path) -> Result<(u64, String, u64), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let read = reader
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if read == 0 || !line.ends_with(b"\n") {
        return Err(format!("{}: no segment header", path.display()));
    }
    let header: SegmentHeader = serde_json::from_slice(&line[..line.len() - 1])
        .map_err(|e| format!("{}: bad segment header: {e}", path.display()))?;
    let mut good = read as u64;
    let (mut next_seq, mut head) = (header.first_seq, header.head);
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| e.to_string())?;
        if read == 0 || !line.ends_with(b"\n") {
            break;
        }
        let body = &line[..line.len() - 1];
        let record: RecordLine<'_> = serde_json::from_slice(body).map_err(|e| {
            format!(
                "{}: record {next_seq} is not readable ({e}); run `portvagt audit verify`",
                path.display()
            )
        })?;
        if record.seq != next_seq || record.prev != head {
            return Err(format!(
                "{}: the chain breaks at record {next_seq}; run `portvagt audit verify`",
                path.display()
            ));
        }
        head = sha256_hex(body);
        next_seq += 1;
        good += read as u64;
    }
    Ok((next_seq, head, good))
}
