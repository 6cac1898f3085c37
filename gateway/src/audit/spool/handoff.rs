//! What the writer hands the shipper in memory: each record it has made durable, with the hash
//! it computed and where the record ends in the files. The shipper then ships what was just
//! written without reading it back, parsing and hashing it again. Bounded: while the shipper is
//! behind (the repository away), the oldest records go, and the shipper reads those from the
//! files, checking the chain as it reads ([`super::super::reading::read_batch`]).
//!
//! What is handed over is what the writer wrote, so a record altered in the files after it was
//! written is shipped as it was written. The alteration is found where the files are read: by
//! the shipper's start check and by `portvagt audit verify`, unless its segment was shipped and
//! pruned before either ran (the repository then holds the record as written). The events are
//! the gateway's own serialized AuditEvents, so memory needs no JSON check the files get.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::super::position::Position;
use super::super::reading::{Batch, Gather, Reading};

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
    queue: VecDeque<Handed>,
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
            records.queue.push_back(record);
        }
        while records.queue.len() > MAX_RECORDS || records.bytes > MAX_BYTES {
            let Some(gone) = records.queue.pop_front() else {
                break;
            };
            records.bytes -= gone.size();
        }
    }

    /// The batch after `from` gathered from memory, by the rules [`read_batch`] reads by, if
    /// the records held continue exactly from `from` (its sequence number and hash), or `from`
    /// is the last record added (an empty batch: nothing new); `None` when neither (the
    /// shipper is behind them, or at a start): then the files are read. Records up to `from`
    /// are let go.
    ///
    /// [`read_batch`]: super::super::reading::read_batch
    pub(crate) fn take(&self, from: &Position, reading: Reading<'_>) -> Option<Batch> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        while records
            .queue
            .front()
            .is_some_and(|first| first.seq <= from.seq)
        {
            if let Some(gone) = records.queue.pop_front() {
                records.bytes -= gone.size();
            }
        }
        let continues = from.segment != 0
            && match records.queue.front() {
                Some(first) => {
                    first.seq == from.seq + 1 && from.head.as_deref() == Some(first.prev.as_str())
                }
                None => records.last.as_ref().is_some_and(|(seq, hash)| {
                    *seq == from.seq && from.head.as_deref() == Some(hash.as_str())
                }),
            };
        if !continues {
            return None;
        }
        let mut gather = Gather::new(from.clone(), reading);
        for record in &records.queue {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Handed {
        let hash = |seq: u64| format!("{seq:064}");
        Handed {
            seq,
            prev: hash(seq - 1),
            hash: hash(seq),
            segment: 1,
            end: seq * 100,
            kind: HandedKind::Event(Bytes::from(format!("{{\"n\":{seq}}}"))),
        }
    }

    fn at(seq: u64) -> Position {
        Position {
            segment: 1,
            offset: seq * 100,
            seq,
            head: Some(format!("{seq:064}")),
            last_event: None,
        }
    }

    fn held(handoff: &Handoff) -> Vec<u64> {
        let records = handoff.records.lock().unwrap();
        records.queue.iter().map(|record| record.seq).collect()
    }

    const ALL: Reading<'static> = Reading {
        limit: usize::MAX,
        through: u64::MAX,
        keys: None,
        keep_events: true,
    };

    #[test]
    fn what_is_held_is_one_unbroken_run_and_goes_once_shipped() {
        let handoff = Handoff::default();
        let wanted = handoff.want();
        handoff.add((1..=3).map(record).collect());
        // Record 4 never handed over (say, a writer that had no handoff for a while): 5 and 6
        // replace what was held, so 3 is not followed by 5.
        handoff.add(vec![record(5), record(6)]);
        assert_eq!(held(&handoff), [5, 6]);
        assert!(handoff.take(&at(3), ALL).is_none(), "3 → 5 would skip 4");
        // Shipped up to 5: 5 is let go, 6 is taken.
        let batch = handoff.take(&at(4), ALL).unwrap();
        assert_eq!(batch.events.len(), 2);
        assert!(handoff.take(&at(5), ALL).is_some());
        assert_eq!(held(&handoff), [6]);
        // Everything taken: an empty batch, not a read of the files.
        let batch = handoff.take(&at(6), ALL).unwrap();
        assert!(batch.events.is_empty() && batch.next == at(6));
        assert!(held(&handoff).is_empty());
        // The same place after another hash is not where it stands.
        let elsewhere = Position {
            head: Some("f".repeat(64)),
            ..at(6)
        };
        assert!(handoff.take(&elsewhere, ALL).is_none());
        // The shipper gone: nothing is kept any more.
        handoff.add(vec![record(7)]);
        drop(wanted);
        assert!(!handoff.wanted());
        assert!(held(&handoff).is_empty());
        assert!(handoff.take(&at(6), ALL).is_none());
    }

    #[test]
    fn the_oldest_go_beyond_the_bounds() {
        let handoff = Handoff::default();
        let _wanted = handoff.want();
        let many = MAX_RECORDS as u64 + 10;
        handoff.add((1..=many).map(record).collect());
        let kept = held(&handoff);
        assert_eq!(kept.len(), MAX_RECORDS);
        assert_eq!(kept[0], 11);
        assert!(handoff.take(&at(5), ALL).is_none(), "behind: the files");
        assert_eq!(
            handoff.take(&at(10), ALL).unwrap().events.len(),
            MAX_RECORDS
        );
        // Bytes bound too: a few large events.
        let big = |seq| Handed {
            kind: HandedKind::Event(Bytes::from(vec![b' '; MAX_BYTES / 3])),
            ..record(seq)
        };
        handoff.add((many + 1..=many + 4).map(big).collect());
        assert_eq!(held(&handoff).len(), 3);
    }
}
