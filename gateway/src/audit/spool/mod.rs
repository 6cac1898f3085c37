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
//!
//! This file is the handle requests hold ([`Spool`]): it queues work and waits for it to be
//! durable, and writes nothing itself. Only the thread in `writer` writes the chain; `files`
//! knows the shape of the files; `handoff` holds what the writer made durable for the shipper,
//! in memory, so that shipping does not read back what was just written.

mod files;
mod handoff;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;

use bytes::Bytes;
use tokio::sync::oneshot;

pub(crate) use self::files::{
    RecordLine, SegmentHeader, create_fresh, read_line, segment_name, segments, sha256_hex,
};
#[cfg(test)]
pub(crate) use self::handoff::Handed;
pub(crate) use self::handoff::{HandedKind, Handoff};
use self::writer::Writer;
use super::seal::Sealer;

/// The chain head before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
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

/// Work waiting for the writer, and where to say it is durable (with the last sequence
/// number written for it).
struct Job {
    work: Work,
    done: oneshot::Sender<Result<u64, SpoolError>>,
}

enum Work {
    /// Serialized AuditEvents.
    Append(Vec<Bytes>),
    /// A `prune` seal: records before this one may go; the unclean restarts to carry on.
    Prune(u64, Vec<u64>),
    /// A `close` seal; appends after it are refused.
    Close,
    /// A `seal` now (the shipper wants what is written vouched for).
    Seal,
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
    handoff: Arc<Handoff>,
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
        let handoff = Arc::new(Handoff::default());
        let writer = Writer::open(dir, segment_bytes, sealer, handoff.clone())?;
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
            handoff,
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
        self.submit(Work::Append(events.into_iter().map(Bytes::from).collect()))
            .await
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

    /// The records the writer has made durable, handed over in memory once a shipper wants
    /// them.
    pub(crate) fn handoff(&self) -> &Handoff {
        &self.handoff
    }

    /// The sequence number of the last durable record, kept current by the writer.
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
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
