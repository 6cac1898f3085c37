//! What the shipper reads: only a chain that continues what it shipped, every seal it passes
//! checked, and on a sealed spool only what a seal read with it vouches for. Test code only:
//! nothing outside the audit tests may use it.

use super::super::reading::take_handed;
use super::super::spool::{Spool, segment_name};
use super::{event, lines, sealed};

#[tokio::test]
async fn the_shipper_reads_only_a_chain_that_continues_what_it_shipped() {
    use super::super::position::Position;
    use super::super::reading::{ReadError, Reading, read_batch};
    let up_to = |limit| Reading {
        limit,
        through: u64::MAX,
        keys: None,
        keep_events: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
    for n in 0..4 {
        spool.append(vec![event(n)]).await.unwrap();
    }
    drop(spool);
    let first = read_batch(dir.path(), Position::default(), up_to(2)).unwrap();
    assert_eq!(first.events.len(), 2);
    let at = first.next;
    let original = lines(dir.path(), 1);
    let segment = dir.path().join(segment_name(1));

    // Record 3 altered: record 4 no longer follows it.
    let mut altered = original.clone();
    altered[3] = altered[3].replace("\"n\":2", "\"n\":7");
    std::fs::write(&segment, altered.join("\n") + "\n").unwrap();
    let error = read_batch(dir.path(), at.clone(), up_to(10)).err().unwrap();
    assert!(matches!(error, ReadError::Broken(_)), "{error}");

    // The whole spool replaced by another chain of the same length: record 3 does not
    // follow the record 2 that was shipped.
    std::fs::remove_dir_all(dir.path()).unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
    for n in 10..14 {
        spool.append(vec![event(n)]).await.unwrap();
    }
    drop(spool);
    let error = read_batch(dir.path(), at.clone(), up_to(10)).err().unwrap();
    assert!(matches!(error, ReadError::Broken(_)), "{error}");

    // The genuine spool reads on.
    std::fs::write(&segment, original.join("\n") + "\n").unwrap();
    let rest = read_batch(dir.path(), at, up_to(10)).unwrap();
    assert_eq!(rest.events.len(), 2);
}

#[tokio::test]
async fn the_shipper_checks_every_seal_it_passes() {
    use super::super::position::Position;
    use super::super::reading::{ReadError, Reading, read_batch};
    let dir = tempfile::tempdir().unwrap();
    let keydir = tempfile::tempdir().unwrap();
    let (sealer, keys) = sealed::keys(keydir.path(), "seal-1", std::time::Duration::from_secs(60));
    let other = crate::auth::issuer_key::IssuerKey::generate("seal-1").unwrap();
    std::fs::write(keydir.path().join("other.json"), other.jwks()).unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, Some(sealer)).unwrap();
    spool.append(vec![event(0), event(1)]).await.unwrap();
    let sealed = spool.seal_now().await.unwrap();
    spool.append(vec![event(2)]).await.unwrap();
    let scan = |keys| Reading {
        limit: usize::MAX,
        through: u64::MAX,
        keys: Some(keys),
        keep_events: false,
    };
    let read = read_batch(dir.path(), Position::default(), scan(&keys)).unwrap();
    assert_eq!(
        read.last_seal.map(|(seq, _)| seq),
        Some(sealed),
        "the last seal the scan checked"
    );
    assert!(read.events.is_empty(), "a scan keeps no events");
    // A seal by a key the shipper does not hold: the spool is not shipped past it.
    let strangers = super::super::seal::SealKeys::load(&keydir.path().join("other.json")).unwrap();
    let error = read_batch(dir.path(), Position::default(), scan(&strangers))
        .err()
        .unwrap();
    assert!(matches!(error, ReadError::Broken(_)), "{error}");
}

#[tokio::test]
async fn a_sealed_spool_ships_only_what_a_seal_read_with_it_vouches_for() {
    use super::super::position::Position;
    use super::super::reading::{ReadError, Reading, read_batch};
    let dir = tempfile::tempdir().unwrap();
    let keydir = tempfile::tempdir().unwrap();
    let (sealer, keys) = sealed::keys(
        keydir.path(),
        "seal-1",
        std::time::Duration::from_secs(3600),
    );
    let spool = Spool::open(dir.path(), 1 << 30, Some(sealer)).unwrap();
    spool.append(vec![event(0), event(1)]).await.unwrap();
    let sealed = spool.seal_now().await.unwrap();
    spool.append(vec![event(2)]).await.unwrap();
    let reading = |limit| Reading {
        limit,
        through: u64::MAX,
        keys: Some(&keys),
        keep_events: true,
    };
    let read = read_batch(dir.path(), Position::default(), reading(1)).unwrap();
    assert_eq!(
        read.events.len(),
        2,
        "on to the seal after the limit, no further"
    );
    assert_eq!(read.next.seq, sealed);
    assert_eq!(read.last_seal.as_ref().map(|(seq, _)| *seq), Some(sealed));
    let rest = read_batch(dir.path(), read.next, reading(10)).unwrap();
    assert!(rest.events.is_empty(), "event 2 waits for its seal");

    // Many events in one append: the writer seals at least every SEAL_EVERY_RECORDS.
    let many = super::super::spool::SEAL_EVERY_RECORDS as usize * 2 + 500;
    spool
        .append((0..many).map(|n| event(10 + n)).collect())
        .await
        .unwrap();
    spool.seal_now().await.unwrap();
    drop(spool);
    let mut gap = 0u64;
    for line in lines(dir.path(), 1).iter().skip(1) {
        if line.contains("\"seal\":") {
            gap = 0;
        } else {
            gap += 1;
            assert!(
                gap <= super::super::spool::SEAL_EVERY_RECORDS,
                "a gap of {gap}"
            );
        }
    }
    let all = read_batch(
        dir.path(),
        Position::default(),
        reading(usize::MAX - 10_000),
    )
    .unwrap();
    assert_eq!(all.events.len(), many + 3);

    // A long run without seals (an unsealed writer) is refused, not shipped unvouched.
    let unsealed = tempfile::tempdir().unwrap();
    let spool = Spool::open(unsealed.path(), 1 << 30, None).unwrap();
    spool.append((0..5000).map(event).collect()).await.unwrap();
    drop(spool);
    let error = read_batch(unsealed.path(), Position::default(), reading(10))
        .err()
        .unwrap();
    assert!(matches!(error, ReadError::Broken(_)), "{error}");
}

/// Ships the whole spool from `from` the way the shipper does, `limit` events a batch: from
/// what the writer handed over where it continues, else from the files. Each batch taken from
/// memory must be the batch the files give, also when it must stop short at a record before
/// the end (`through`). Returns the events, how many batches came from memory, and how many
/// from the files after the first.
fn ship_all(
    spool: &Spool,
    mut from: super::super::position::Position,
    keys: Option<&super::super::seal::SealKeys>,
    limits: &[usize],
) -> (Vec<(String, bytes::Bytes)>, usize, usize) {
    use super::super::reading::{Reading, read_batch};
    let through = spool.written().load(std::sync::atomic::Ordering::Relaxed);
    let (mut shipped, mut from_memory, mut from_files) = (Vec::new(), 0, 0);
    for round in 0.. {
        let reading = Reading {
            limit: limits[round % limits.len()],
            through,
            keys,
            keep_events: true,
        };
        // Stopping short: a few records on from here.
        let short = Reading {
            through: from.seq + 3,
            ..reading
        };
        let read = read_batch(spool.dir(), from.clone(), reading).unwrap();
        let read_short = read_batch(spool.dir(), from.clone(), short).unwrap();
        if let Some(taken) = take_handed(spool.handoff(), &from, short) {
            assert_eq!(taken.events, read_short.events, "from {from:?}");
            assert_eq!(taken.next, read_short.next, "from {from:?}");
        }
        match take_handed(spool.handoff(), &from, reading) {
            Some(taken) => {
                from_memory += 1;
                assert_eq!(taken.events, read.events, "from {from:?}");
                assert_eq!(taken.next, read.next, "from {from:?}");
                assert_eq!(taken.last_seal, read.last_seal, "from {from:?}");
            }
            None if from.seq > 0 => from_files += 1,
            None => {}
        }
        if read.next == from {
            break;
        }
        shipped.extend(read.events);
        from = read.next;
    }
    (shipped, from_memory, from_files)
}

#[tokio::test]
async fn what_the_writer_hands_over_is_what_the_files_hold() {
    use super::super::position::Position;
    use super::super::reading::{Reading, read_batch};
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let keydir = tempfile::tempdir().unwrap();
        let (sealer, keys) = if sealed {
            let (sealer, keys) = sealed::keys(
                keydir.path(),
                "seal-1",
                std::time::Duration::from_secs(3600),
            );
            (Some(sealer), Some(keys))
        } else {
            (None, None)
        };
        // Small segments: the records roll over into new ones many times.
        let spool = Spool::open(dir.path(), 2048, sealer).unwrap();
        spool.append(vec![event(0)]).await.unwrap();
        let _wanted = spool.handoff().want();
        let mut sent = 1;
        for round in 0..40 {
            let count = round % 7 + 1;
            spool
                .append((sent..sent + count).map(event).collect())
                .await
                .unwrap();
            sent += count;
            if sealed && round % 3 == 0 {
                spool.seal_now().await.unwrap();
            }
            if sealed && round % 11 == 5 {
                spool.seal_prune(1, vec![]).await.unwrap();
            }
        }
        spool.close().await.unwrap();
        assert!(super::super::spool::segments(dir.path()).unwrap().len() > 5);
        // The first records were written before the shipper wanted them: read from the files.
        let reading = Reading {
            limit: 1,
            through: u64::MAX,
            keys: keys.as_ref(),
            keep_events: true,
        };
        assert!(take_handed(spool.handoff(), &Position::default(), reading).is_none());
        let first = read_batch(dir.path(), Position::default(), reading).unwrap();
        assert!(take_handed(spool.handoff(), &first.next, reading).is_some());
        // The same sequence number after another hash is not where memory continues.
        let elsewhere = Position {
            head: Some("0".repeat(64)),
            ..first.next.clone()
        };
        assert!(take_handed(spool.handoff(), &elsewhere, reading).is_none());
        let (shipped, from_memory, from_files) =
            ship_all(&spool, first.next, keys.as_ref(), &[1, 2, 5, 3]);
        assert_eq!(shipped.len() + first.events.len(), sent, "sealed: {sealed}");
        assert!(from_memory > 10, "{from_memory} batches from memory");
        assert_eq!(from_files, 0, "sealed: {sealed}");
        for (n, (_, got)) in first.events.iter().chain(&shipped).enumerate() {
            assert_eq!(**got, *event(n), "sealed: {sealed}");
        }
    }
}

#[tokio::test]
async fn a_shipper_behind_what_memory_holds_reads_the_files_then_memory() {
    use super::super::position::Position;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 30, None).unwrap();
    let _wanted = spool.handoff().want();
    // More than memory keeps: the oldest are let go.
    let many = 20_000;
    for chunk in (0..many).collect::<Vec<_>>().chunks(1000) {
        spool
            .append(chunk.iter().copied().map(event).collect())
            .await
            .unwrap();
    }
    let (shipped, from_memory, from_files) = ship_all(&spool, Position::default(), None, &[1000]);
    assert_eq!(shipped.len(), many);
    assert!(from_memory >= 3, "{from_memory} batches from memory");
    assert!(from_files >= 3, "{from_files} batches from the files");
    for (n, (_, got)) in shipped.iter().enumerate() {
        assert_eq!(**got, *event(n));
    }
}

/// What memory holds for the shipper: one unbroken run of the chain, let go once shipped,
/// bounded.
mod held {
    use bytes::Bytes;

    use super::super::super::position::Position;
    use super::super::super::reading::{Reading, take_handed};
    use super::super::super::spool::{Handed, HandedKind, Handoff};

    const MAX_RECORDS: usize = 4 * super::super::super::spool::SEAL_EVERY_RECORDS as usize;
    const MAX_BYTES: usize = 16 * 1024 * 1024;

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
        handoff.held()
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
        assert!(
            take_handed(&handoff, &at(3), ALL).is_none(),
            "3 → 5 would skip 4"
        );
        // Shipped up to 5: 5 is let go, 6 is taken.
        let batch = take_handed(&handoff, &at(4), ALL).unwrap();
        assert_eq!(batch.events.len(), 2);
        assert!(take_handed(&handoff, &at(5), ALL).is_some());
        assert_eq!(held(&handoff), [6]);
        // Everything taken: an empty batch, not a read of the files.
        let batch = take_handed(&handoff, &at(6), ALL).unwrap();
        assert!(batch.events.is_empty() && batch.next == at(6));
        assert!(held(&handoff).is_empty());
        // The same place after another hash is not where it stands.
        let elsewhere = Position {
            head: Some("f".repeat(64)),
            ..at(6)
        };
        assert!(take_handed(&handoff, &elsewhere, ALL).is_none());
        // The shipper gone: nothing is kept any more.
        handoff.add(vec![record(7)]);
        drop(wanted);
        assert!(!handoff.wanted());
        assert!(held(&handoff).is_empty());
        assert!(take_handed(&handoff, &at(6), ALL).is_none());
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
        assert!(
            take_handed(&handoff, &at(5), ALL).is_none(),
            "behind: the files"
        );
        assert_eq!(
            take_handed(&handoff, &at(10), ALL).unwrap().events.len(),
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
