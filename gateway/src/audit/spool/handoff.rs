//! What the writer hands the shipper in memory: each record it has made durable, with the hash
//! it computed and where the record ends in the files. The shipper then ships what was just
//! written without reading it back, parsing and hashing it again. Bounded: while the shipper is
//! behind (the repository away), the oldest records go, and the shipper reads those from the
//! files, checking the chain as it reads. This file only holds them; the shipper's reading
//! ([`super::super::reading::take_handed`]) makes batches of them as it makes them of the
//! files.
//!
//! What is handed over is what the writer wrote, so a record altered in the files after it was
//! written is shipped as it was written. The alteration is found where the files are read: by
//! the shipper's start check and by `portvagt audit verify`, unless its segment was shipped and
//! pruned before either ran (the repository then holds the record as written). The events are
//! the gateway's own serialized AuditEvents, so memory needs no JSON check the files get.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The most records held for the shipper, and the most bytes of events: enough for the
/// shipper, which takes what is new every round, to wait for a seal (the writer seals at least
/// every [`super::SEAL_EVERY_RECORDS`] events); while it is further behind, it reads the files.
const MAX_RECORDS: usize = 4 * super::SEAL_EVERY_RECORDS as usize;
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// One durable record.
#[derive(Debug)]
pub(crate) struct Handed {
    pub(crate) seq: u64,
    /// The hash of the record before it.
    pub(crate) prev: String,
    /// The hash of its line.
    pub(crate) hash: String,
    /// The segment it is in, and the offset just after its line.
    pub(crate) segment: u64,
    pub(crate) end: u64,
    pub(crate) kind: HandedKind,
}

#[derive(Debug)]
pub(crate) enum HandedKind {
    /// An AuditEvent, as spooled.
    Event(Bytes),
    /// A seal's compact JWS.
    Seal(String),
}

impl Handed {
    fn size(&self) -> usize {
        match &self.kind {
            HandedKind::Event(event) => event.len(),
            HandedKind::Seal(jws) => jws.len(),
        }
    }
}

/// The records handed over, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    /// Set by the shipper: without one, nothing is kept.
    wanted: AtomicBool,
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    queue: VecDeque<Arc<Handed>>,
    bytes: usize,
    /// The last record added (its sequence number and hash), kept when the queue is emptied:
    /// a shipper standing there has taken everything.
    last: Option<(u64, String)>,
}

impl Handoff {
    /// From now on, records are kept for a shipper, until the returned guard goes (the
    /// shipper stopped): then nothing more is kept, and what was is let go.
    #[must_use = "records are kept only while the guard lives"]
    pub(crate) fn want(&self) -> Wanted<'_> {
        self.wanted.store(true, Ordering::Relaxed);
        Wanted(self)
    }

    pub(crate) fn wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Adds records just made durable, in chain order, letting the oldest go beyond the bounds.
    /// Records that do not continue the last ones added (none were handed over in between)
    /// replace them: what is held is always one unbroken run of the chain.
    pub(crate) fn add(&self, handed: Vec<Handed>) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        for record in handed {
            let continues = records
                .last
                .as_ref()
                .is_some_and(|(seq, hash)| record.seq == seq + 1 && record.prev == *hash);
            if !continues {
                records.queue.clear();
                records.bytes = 0;
            }
            records.last = Some((record.seq, record.hash.clone()));
            records.bytes += record.size();
            records.queue.push_back(Arc::new(record));
        }
        while records.queue.len() > MAX_RECORDS || records.bytes > MAX_BYTES {
            let Some(gone) = records.queue.pop_front() else {
                break;
            };
            records.bytes -= gone.size();
        }
    }

    /// The records after record `seq` (whose hash is `head`), at most `max`, if what is held
    /// continues exactly from it: the next one's sequence number and previous hash. `Some` of
    /// none when `seq` is the last record added (nothing new); `None` when neither (the shipper
    /// is behind what is held, or at a start): then it reads the files. Records up to `seq` are
    /// let go.
    pub(crate) fn after(&self, seq: u64, head: &str, max: usize) -> Option<Vec<Arc<Handed>>> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        while records.queue.front().is_some_and(|first| first.seq <= seq) {
            if let Some(gone) = records.queue.pop_front() {
                records.bytes -= gone.size();
            }
        }
        let continues = match records.queue.front() {
            Some(first) => first.seq == seq + 1 && first.prev == head,
            None => records
                .last
                .as_ref()
                .is_some_and(|(last, hash)| *last == seq && hash == head),
        };
        continues.then(|| records.queue.iter().take(max).cloned().collect())
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> Vec<u64> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.queue.iter().map(|record| record.seq).collect()
    }
}

/// A shipper's want of the records; see [`Handoff::want`].
pub(crate) struct Wanted<'a>(&'a Handoff);

impl Drop for Wanted<'_> {
    fn drop(&mut self) {
        self.0.wanted.store(false, Ordering::Relaxed);
        let mut records = self.0.records.lock().unwrap_or_else(|e| e.into_inner());
        *records = Records::default();
    }
}
