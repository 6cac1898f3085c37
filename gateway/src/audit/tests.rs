//! The spool and its verifier: the chain holds across group commits, segments and restarts; a
//! crash's unfinished record is cut off; any change to a written record is found.

use std::io::Write as _;

use serde_json::json;

use super::spool::{Spool, segment_name, segments};
use super::verify::{Check, verify};

fn event(n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({ "resourceType": "AuditEvent", "n": n })).unwrap()
}

fn lines(dir: &std::path::Path, segment: u64) -> Vec<String> {
    std::fs::read_to_string(dir.join(segment_name(segment)))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn concurrent_appends_form_one_chain_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 64 * 1024 * 1024, None).unwrap();
    let mut tasks = Vec::new();
    for n in 0..200 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            spool.append(vec![event(n), event(1000 + n)]).await.unwrap()
        }));
    }
    let mut last_seqs = Vec::new();
    for task in tasks {
        last_seqs.push(task.await.unwrap());
    }
    last_seqs.sort_unstable();
    last_seqs.dedup();
    assert_eq!(last_seqs.len(), 200, "every append got its own place");
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_eq!(report.records, 400);
    assert_eq!(report.segments, 1);
    // Both events of one append are adjacent: an append is one unit.
    let lines = lines(dir.path(), 1);
    assert_eq!(lines.len(), 401);
    for pair in lines[1..].chunks(2) {
        let a: serde_json::Value = serde_json::from_str(&pair[0]).unwrap();
        let b: serde_json::Value = serde_json::from_str(&pair[1]).unwrap();
        assert_eq!(
            a["event"]["n"].as_u64().unwrap() + 1000,
            b["event"]["n"].as_u64().unwrap()
        );
    }
}

#[tokio::test]
async fn the_chain_continues_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), 300, None).unwrap();
        for n in 0..10 {
            spool.append(vec![event(n)]).await.unwrap();
        }
    }
    let spool = Spool::open(dir.path(), 300, None).unwrap();
    let seq = spool.append(vec![event(10)]).await.unwrap();
    assert_eq!(seq, 11);
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_eq!(report.records, 11);
    assert!(report.segments > 2, "{report:?}");
}

#[tokio::test]
async fn a_record_cut_short_by_a_crash_is_dropped_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
        for n in 0..3 {
            spool.append(vec![event(n)]).await.unwrap();
        }
    }
    let segment = dir.path().join(segment_name(1));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(b"{\"seq\":4,\"prev\":\"ab")
        .unwrap();
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_eq!(report.records, 3);
    assert!(report.unfinished_tail.is_some());

    let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
    assert_eq!(spool.append(vec![event(3)]).await.unwrap(), 4);
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_eq!((report.records, report.unfinished_tail), (4, None));
}

#[tokio::test]
async fn altered_removed_and_reordered_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
    for n in 0..5 {
        spool.append(vec![event(n)]).await.unwrap();
    }
    drop(spool);
    let segment = dir.path().join(segment_name(1));
    let original = lines(dir.path(), 1);
    let write = |lines: &[String]| std::fs::write(&segment, lines.join("\n") + "\n").unwrap();

    let mut altered = original.clone();
    altered[3] = altered[3].replace("\"n\":2", "\"n\":7");
    write(&altered);
    let broken = verify(dir.path(), Check::chain_only()).unwrap_err();
    assert_eq!(
        broken.line, 5,
        "the record after the altered one no longer follows: {broken}"
    );

    let mut removed = original.clone();
    removed.remove(2);
    write(&removed);
    let broken = verify(dir.path(), Check::chain_only()).unwrap_err();
    assert_eq!(broken.line, 3, "{broken}");

    let mut swapped = original.clone();
    swapped.swap(2, 3);
    write(&swapped);
    assert_eq!(verify(dir.path(), Check::chain_only()).unwrap_err().line, 3);

    // The last record altered: nothing follows it to break, but the chain head differs, which
    // is what a head kept elsewhere (the shipped copy) is compared with.
    let mut last = original.clone();
    last[5] = last[5].replace("\"n\":4", "\"n\":9");
    write(&last);
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_ne!(report.head, {
        write(&original);
        verify(dir.path(), Check::chain_only()).unwrap().head
    });

    write(&original);
    assert_eq!(verify(dir.path(), Check::chain_only()).unwrap().records, 5);
}

#[tokio::test]
async fn one_spool_has_one_writer_and_a_half_made_segment_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
    spool.append(vec![event(0)]).await.unwrap();
    let second = Spool::open(dir.path(), 1 << 20, None).unwrap_err();
    assert!(second.to_string().contains("another process"), "{second}");
    drop(spool);
    // A crash while the next segment was being staged leaves only its staging file.
    let staged = dir.path().join(format!("{}.new", segment_name(2)));
    std::fs::write(&staged, b"{\"segment\":2").unwrap();
    let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
    assert!(!staged.exists());
    assert_eq!(spool.append(vec![event(1)]).await.unwrap(), 2);
    assert_eq!(verify(dir.path(), Check::chain_only()).unwrap().records, 2);
}

#[tokio::test]
async fn shipped_segments_go_when_old_enough_and_the_rest_still_verifies_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), 300, None).unwrap();
        for n in 0..10 {
            spool.append(vec![event(n)]).await.unwrap();
        }
    }
    let before = super::spool::segments(dir.path()).unwrap();
    assert!(before.len() > 3, "{before:?}");
    let shipped_to = before[3].0;
    let keep = |d| {
        let found = super::reading::deletable(dir.path(), shipped_to, d).unwrap();
        super::reading::delete(dir.path(), &found).unwrap()
    };

    // Not old enough: nothing goes.
    assert_eq!(keep(std::time::Duration::from_secs(3600)), 0);
    assert_eq!(super::spool::segments(dir.path()).unwrap(), before);

    // Old enough: only what the repository acknowledged in full goes.
    assert_eq!(keep(std::time::Duration::ZERO), 3);
    let after = super::spool::segments(dir.path()).unwrap();
    assert_eq!(after, before[3..].to_vec());
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_eq!(report.segments, before.len() as u64 - 3);
    assert!(report.records < 10, "{report:?}");
    let head = report.head;

    // The writer goes on after the deletion, and the chain with it.
    let spool = Spool::open(dir.path(), 300, None).unwrap();
    assert_eq!(spool.append(vec![event(10)]).await.unwrap(), 11);
    drop(spool);
    let report = verify(dir.path(), Check::chain_only()).unwrap();
    assert_ne!(report.head, head);

    // A segment in the middle removed by hand is still found.
    let middle = super::spool::segments(dir.path()).unwrap()[1].1.clone();
    std::fs::remove_file(middle).unwrap();
    assert!(
        verify(dir.path(), Check::chain_only())
            .unwrap_err()
            .problem
            .contains("missing")
    );
}

mod sealed {
    //! A sealed spool proves itself complete: cut either end, rewrite the chain, or forge or
    //! move a seal, and the verifier says so.

    use std::sync::Arc;
    use std::time::Duration;

    use tempfile::TempDir;

    use super::super::seal::{Before, Seal, SealKeys, SealKind, Sealer, unix_now};
    use super::super::spool::{GENESIS, Spool, SpoolError, segment_name, segments, sha256_hex};
    use super::super::verify::{Check, End, verify};
    use super::{event, lines};
    use crate::auth::issuer_key::IssuerKey;

    /// A spool folder, a sealer (kid `seal-1`), the keys that check its seals, and the folder
    /// its key is in.
    fn fixture(every: Duration) -> (TempDir, Arc<Sealer>, SealKeys, TempDir) {
        let keydir = tempfile::tempdir().unwrap();
        let (sealer, keys) = keys(keydir.path(), "seal-1", every);
        (tempfile::tempdir().unwrap(), sealer, keys, keydir)
    }

    /// A seal key in `dir`: the sealer and the keys that check it.
    pub(super) fn keys(
        dir: &std::path::Path,
        kid: &str,
        every: Duration,
    ) -> (Arc<Sealer>, SealKeys) {
        let key = IssuerKey::generate(kid).unwrap();
        let (private, public) = (
            dir.join(format!("{kid}.key")),
            dir.join(format!("{kid}.json")),
        );
        std::fs::write(&private, key.pem()).unwrap();
        std::fs::write(&public, key.jwks()).unwrap();
        let sealer = Sealer::load(&private, kid, "portvagt@test", every).unwrap();
        (Arc::new(sealer), SealKeys::load(&public).unwrap())
    }

    fn check(keys: &SealKeys, now: u64) -> Check<'_> {
        Check {
            keys: Some(keys),
            now,
        }
    }

    /// The seals in segment `segment`, in order.
    fn seals(dir: &std::path::Path, segment: u64) -> Vec<Seal> {
        lines(dir, segment)
            .iter()
            .skip(1)
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|record| Seal::peek(record["seal"].as_str()?))
            .collect()
    }

    /// Rewrites segment `segment` to `lines`, recomputing every hash after the first line
    /// changed, as someone who can write the disk but has no key would.
    fn rewrite_chain(dir: &std::path::Path, segment: u64, mut lines: Vec<String>) {
        let mut head = GENESIS.to_owned();
        for (index, line) in lines.iter_mut().enumerate().skip(1) {
            let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["seq"] = serde_json::json!(index);
            record["prev"] = serde_json::json!(head);
            *line = serde_json::to_string(&record).unwrap();
            head = sha256_hex(line.as_bytes());
        }
        std::fs::write(dir.join(segment_name(segment)), lines.join("\n") + "\n").unwrap();
    }

    #[tokio::test]
    async fn a_cleanly_closed_spool_verifies_and_refuses_appends_after_its_close() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(60));
        let spool = Spool::open(dir.path(), 1 << 20, Some(sealer)).unwrap();
        for n in 0..3 {
            spool.append(vec![event(n)]).await.unwrap();
        }
        assert_eq!(spool.close().await.unwrap(), 5, "open, three events, close");
        assert!(matches!(
            spool.append(vec![event(9)]).await,
            Err(SpoolError::Stopped)
        ));
        drop(spool);
        let kinds: Vec<_> = seals(dir.path(), 1).iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SealKind::Open, SealKind::Close]);
        assert_eq!(seals(dir.path(), 1)[0].before, Some(Before::New));
        // Long after: a closed trail needs no fresh seal.
        let report = verify(dir.path(), check(&keys, unix_now() + 86_400)).unwrap();
        assert_eq!((report.records, report.seals), (3, 2));
        assert!(matches!(report.end, End::Closed(_)), "{report:?}");
        // Without the keys only the chain is checked, and the report says so.
        let unchecked = verify(dir.path(), Check::chain_only()).unwrap();
        assert_eq!((unchecked.end, unchecked.seals), (End::Unchecked, 2));
    }

    #[tokio::test]
    async fn records_cut_off_the_end_are_found_even_back_to_a_seal() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(1));
        let spool = Spool::open(dir.path(), 1 << 20, Some(sealer)).unwrap();
        spool.append(vec![event(0)]).await.unwrap();
        // Idle: the writer seals on its own.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        spool.append(vec![event(1)]).await.unwrap();
        spool.close().await.unwrap();
        drop(spool);
        let original = lines(dir.path(), 1);
        let kinds: Vec<_> = seals(dir.path(), 1).iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SealKind::Open, SealKind::Seal, SealKind::Close]);
        let later = unix_now() + 60;
        assert!(matches!(
            verify(dir.path(), check(&keys, later)).unwrap().end,
            End::Closed(_)
        ));

        // The close and the last record cut off: the trail stops at a seal that is not fresh.
        let segment = dir.path().join(segment_name(1));
        let cut = |keep: usize| {
            std::fs::write(&segment, original[..keep].join("\n") + "\n").unwrap();
            verify(dir.path(), check(&keys, later)).unwrap().end
        };
        assert_eq!(
            cut(original.len() - 2),
            End::Unclosed {
                last_seal: Some(seals(dir.path(), 1)[1].time),
                after: 0
            }
        );
        // Only the close cut off.
        assert!(matches!(
            cut(original.len() - 1),
            End::Unclosed { after: 1, .. }
        ));
        // A fresh last seal is the expected end only while a gateway holds the spool's lock.
        std::fs::write(&segment, original[..original.len() - 2].join("\n") + "\n").unwrap();
        let fresh = seals(dir.path(), 1)[1].time;
        assert!(matches!(
            verify(dir.path(), check(&keys, fresh)).unwrap().end,
            End::Unclosed { .. }
        ));
        let lock = std::fs::File::open(dir.path().join("spool.lock")).unwrap();
        lock.lock().unwrap();
        assert_eq!(
            verify(dir.path(), check(&keys, fresh)).unwrap().end,
            End::Live(fresh)
        );
        // ... and not when it has stopped sealing.
        assert!(matches!(
            verify(dir.path(), check(&keys, later)).unwrap().end,
            End::Unclosed { .. }
        ));
    }

    #[tokio::test]
    async fn a_rewritten_chain_a_forged_seal_and_a_moved_seal_are_broken() {
        let (dir, sealer, keys, keydir) = fixture(Duration::from_secs(60));
        let spool = Spool::open(dir.path(), 1 << 20, Some(sealer)).unwrap();
        for n in 0..4 {
            spool.append(vec![event(n)]).await.unwrap();
        }
        spool.close().await.unwrap();
        drop(spool);
        let original = lines(dir.path(), 1);
        let segment = dir.path().join(segment_name(1));
        let now = unix_now();

        // A record removed and every hash after it recomputed: the chain holds, the close
        // seal does not (it signed another predecessor).
        let mut removed = original.clone();
        removed.remove(3);
        rewrite_chain(dir.path(), 1, removed);
        assert!(
            verify(dir.path(), Check::chain_only()).is_ok(),
            "the bare chain cannot tell"
        );
        let broken = verify(dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("another place"), "{broken}");

        // A seal made with a key the verifier does not trust.
        let (other, _) = self::keys(keydir.path(), "seal-1-forged", Duration::from_secs(60));
        let forged_dir = tempfile::tempdir().unwrap();
        let forged = Spool::open(forged_dir.path(), 1 << 20, Some(other)).unwrap();
        forged.append(vec![event(0)]).await.unwrap();
        drop(forged);
        let broken = verify(forged_dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("not trusted"), "{broken}");

        // The right key, the wrong place: the open seal copied over the close.
        let mut moved = original.clone();
        let open: serde_json::Value = serde_json::from_str(&original[1]).unwrap();
        let mut close: serde_json::Value = serde_json::from_str(&original[6]).unwrap();
        close["seal"] = open["seal"].clone();
        moved[6] = serde_json::to_string(&close).unwrap();
        std::fs::write(&segment, moved.join("\n") + "\n").unwrap();
        let broken = verify(dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("another place"), "{broken}");

        // A seal's payload altered (its kind turned into a close): the signature fails.
        std::fs::write(&segment, original.join("\n") + "\n").unwrap();
        let mut altered = original.clone();
        let mut record: serde_json::Value = serde_json::from_str(&original[1]).unwrap();
        let jws = record["seal"].as_str().unwrap().to_owned();
        let parts: Vec<&str> = jws.split('.').collect();
        let payload = String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1])
                .unwrap(),
        )
        .unwrap()
        .replace("\"open\"", "\"close\"");
        let payload =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload);
        record["seal"] = serde_json::json!(format!("{}.{payload}.{}", parts[0], parts[2]));
        altered[1] = serde_json::to_string(&record).unwrap();
        rewrite_chain(dir.path(), 1, altered);
        let broken = verify(dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("signature"), "{broken}");
    }

    #[tokio::test]
    async fn front_segments_may_go_only_as_far_as_a_prune_seal_allows() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(60));
        let spool = Spool::open(dir.path(), 600, Some(sealer)).unwrap();
        for n in 0..12 {
            spool.append(vec![event(n)]).await.unwrap();
        }
        let all = segments(dir.path()).unwrap();
        assert!(all.len() >= 4, "{all:?}");
        let now = unix_now();
        let remove = |upto: usize| {
            for (_, path) in &all[..upto] {
                let _ = std::fs::remove_file(path);
            }
        };

        // Cut without a prune seal: found, whatever the chain says.
        let saved: Vec<_> = all
            .iter()
            .map(|(_, p)| (p.clone(), std::fs::read(p).unwrap()))
            .collect();
        remove(2);
        assert!(verify(dir.path(), Check::chain_only()).is_ok());
        let broken = verify(dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("no seal allowed"), "{broken}");
        for (path, bytes) in &saved {
            std::fs::write(path, bytes).unwrap();
        }

        // Cut, and the gap hidden: the first segments replaced by header-only files that
        // claim to continue where the third begins, numbered as the originals.
        let third = super::super::reading::first_seq_of(dir.path(), all[2].0).unwrap();
        let header = lines(dir.path(), all[2].0)[0].clone();
        for (number, path) in &all[..2] {
            let renumbered = header.replacen(
                &format!("\"segment\":{}", all[2].0),
                &format!("\"segment\":{number}"),
                1,
            );
            std::fs::write(path, renumbered + "\n").unwrap();
        }
        let broken = verify(dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("without records"), "{broken}");
        // ... or the later segments renumbered from 1: record 1 must follow the genesis head,
        // and a later start needs a prune seal.
        for (path, bytes) in &saved {
            std::fs::write(path, bytes).unwrap();
        }
        let renamed = tempfile::tempdir().unwrap();
        for (index, (number, path)) in all[2..].iter().enumerate() {
            let new = index as u64 + 1;
            let text = std::fs::read_to_string(path).unwrap().replacen(
                &format!("\"segment\":{number}"),
                &format!("\"segment\":{new}"),
                1,
            );
            std::fs::write(renamed.path().join(segment_name(new)), text).unwrap();
        }
        let broken = verify(renamed.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("no seal allowed"), "{broken}");
        let with_one = renamed.path().join(segment_name(1));
        let text = std::fs::read_to_string(&with_one).unwrap();
        let first_line = text.lines().next().unwrap().to_owned();
        let header: serde_json::Value = serde_json::from_str(&first_line).unwrap();
        let claimed = text.replacen(
            &first_line,
            &first_line.replacen(
                &format!("\"first_seq\":{}", header["first_seq"]),
                "\"first_seq\":1",
                1,
            ),
            1,
        );
        std::fs::write(&with_one, claimed).unwrap();
        assert!(verify(renamed.path(), check(&keys, now)).is_err());

        // A prune seal allows the records before the third segment to go; it is durable
        // first.
        spool.seal_prune(third, Vec::new()).await.unwrap();
        remove(2);
        let report = verify(dir.path(), check(&keys, now)).unwrap();
        assert_eq!(report.first_seq, third, "{report:?}");
        // One segment more than allowed is a cut.
        remove(3);
        let broken = verify(dir.path(), check(&keys, now)).unwrap_err();
        assert!(broken.problem.contains("no seal allowed"), "{broken}");
        // Once closed, the spool allows no more pruning.
        spool.close().await.unwrap();
        assert!(matches!(
            spool.seal_prune(u64::MAX, Vec::new()).await,
            Err(SpoolError::Stopped)
        ));
    }

    #[tokio::test]
    async fn a_restart_after_a_crash_is_on_record_and_after_a_close_is_not() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(60));
        {
            let spool = Spool::open(dir.path(), 1 << 20, Some(sealer.clone())).unwrap();
            spool.append(vec![event(0)]).await.unwrap();
            // The last handle gone: a clean close.
        }
        {
            let spool = Spool::open(dir.path(), 1 << 20, Some(sealer.clone())).unwrap();
            spool.append(vec![event(1)]).await.unwrap();
        }
        // A crash: the close never written.
        let segment = dir.path().join(segment_name(1));
        let mut kept = lines(dir.path(), 1);
        kept.pop();
        std::fs::write(&segment, kept.join("\n") + "\n").unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, Some(sealer)).unwrap();
        spool.append(vec![event(2)]).await.unwrap();
        drop(spool);
        let befores: Vec<_> = seals(dir.path(), 1)
            .iter()
            .filter(|s| s.kind == SealKind::Open)
            .map(|s| s.before)
            .collect();
        assert_eq!(
            befores,
            [
                Some(Before::New),
                Some(Before::Closed),
                Some(Before::Unclosed)
            ]
        );
        let report = verify(dir.path(), check(&keys, unix_now())).unwrap();
        assert_eq!(report.unclean_restarts.len(), 1, "{report:?}");
        assert_eq!(report.unclean_restarts[0].unsealed, Some(1), "{report:?}");
        assert_eq!(report.records, 3);
    }

    #[tokio::test]
    async fn records_forged_while_the_gateway_is_down_show_as_an_unclean_restart() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(60));
        {
            let spool = Spool::open(dir.path(), 1 << 20, Some(sealer.clone())).unwrap();
            spool.append(vec![event(0), event(1)]).await.unwrap();
        }
        let original = lines(dir.path(), 1);
        let close: serde_json::Value = serde_json::from_str(original.last().unwrap()).unwrap();
        let forge = |with_close: bool| {
            // Down: the close cut off, a forged record chained on in its place (and, to make
            // the next open say "closed", the genuine close moved after it).
            let mut forged = original[..original.len() - 1].to_vec();
            forged.push(
                serde_json::json!({ "seq": 0, "prev": "",
                    "event": { "resourceType": "AuditEvent", "n": 99 } })
                .to_string(),
            );
            if with_close {
                forged.push(
                    serde_json::json!({ "seq": 0, "prev": "", "seal": close["seal"] }).to_string(),
                );
            }
            let _ = std::fs::remove_dir_all(dir.path());
            std::fs::create_dir_all(dir.path()).unwrap();
            rewrite_chain(dir.path(), 1, forged);
        };
        let restart = || async {
            let spool = Spool::open(dir.path(), 1 << 20, Some(sealer.clone())).unwrap();
            spool.append(vec![event(2)]).await.unwrap();
        };

        forge(false);
        restart().await;
        let report = verify(dir.path(), check(&keys, unix_now())).unwrap();
        assert_eq!(report.unclean_restarts.len(), 1, "{report:?}");
        // The two genuine records after the run's open seal and the forged one: no seal of
        // that run vouches for any of them, and the report says so.
        assert_eq!(report.unclean_restarts[0].unsealed, Some(3), "{report:?}");

        forge(true);
        restart().await;
        let broken = verify(dir.path(), check(&keys, unix_now())).unwrap_err();
        assert!(broken.problem.contains("another place"), "{broken}");
    }

    #[tokio::test]
    async fn a_spool_keeps_its_chain_id_and_a_segment_of_another_chain_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let keydir = tempfile::tempdir().unwrap();
        let (sealer, keys) = keys(keydir.path(), "seal-1", Duration::from_secs(60));
        let chain = {
            let spool = Spool::open(dir.path(), 400, Some(sealer.clone())).unwrap();
            spool.append(vec![event(0), event(1)]).await.unwrap();
            spool.chain().to_owned()
        };
        let spool = Spool::open(dir.path(), 400, Some(sealer.clone())).unwrap();
        assert_eq!(spool.chain(), chain, "kept across a restart");
        for n in 2..8 {
            spool.append(vec![event(n)]).await.unwrap();
        }
        drop(spool);
        let another = Spool::open(other.path(), 400, Some(sealer)).unwrap();
        assert_ne!(another.chain(), chain, "each spool its own");
        drop(another);
        let report = verify(dir.path(), check(&keys, unix_now())).unwrap();
        assert_eq!(report.chain.as_deref(), Some(chain.as_str()));
        assert!(report.segments > 1, "{report:?}");
        // A later segment's header claiming another chain.
        let (_, second) = segments(dir.path()).unwrap()[1].clone();
        let text = std::fs::read_to_string(&second).unwrap();
        std::fs::write(
            &second,
            text.replacen(&chain, "ffffffffffffffffffffffffffffffff", 1),
        )
        .unwrap();
        let broken = verify(dir.path(), check(&keys, unix_now())).unwrap_err();
        assert!(broken.problem.contains("another chain"), "{broken}");
    }

    #[tokio::test]
    async fn an_unclean_restart_stays_on_record_when_its_segment_is_pruned() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(60));
        {
            let spool = Spool::open(dir.path(), 1 << 20, Some(sealer.clone())).unwrap();
            spool.append(vec![event(0)]).await.unwrap();
        }
        // A crash: the close never written.
        let segment = dir.path().join(segment_name(1));
        let mut kept = lines(dir.path(), 1);
        kept.pop();
        std::fs::write(&segment, kept.join("\n") + "\n").unwrap();
        let spool = Spool::open(dir.path(), 400, Some(sealer)).unwrap();
        for n in 1..6 {
            spool.append(vec![event(n)]).await.unwrap();
        }
        let report = verify(dir.path(), check(&keys, unix_now())).unwrap();
        let restarts: Vec<u64> = report.unclean_restarts.iter().map(|r| r.seq).collect();
        assert_eq!(restarts.len(), 1);
        // The shipper prunes the first segment, carrying the restart on in its prune seal.
        let all = segments(dir.path()).unwrap();
        let second = super::super::reading::first_seq_of(dir.path(), all[1].0).unwrap();
        spool.seal_prune(second, restarts.clone()).await.unwrap();
        std::fs::remove_file(&all[0].1).unwrap();
        let report = verify(dir.path(), check(&keys, unix_now())).unwrap();
        assert_eq!(
            report
                .unclean_restarts
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            restarts
        );
        assert_eq!(report.unclean_restarts[0].unsealed, None, "{report:?}");
    }

    #[tokio::test]
    async fn a_failed_rollover_keeps_the_spool_sealed() {
        let (dir, sealer, keys, _keydir) = fixture(Duration::from_secs(3600));
        // The open seal alone fills the first segment: the first append rolls over.
        let spool = Spool::open(dir.path(), 300, Some(sealer)).unwrap();
        // The next segment's name taken: the rollover fails, the append with it.
        let planted = dir.path().join(segment_name(2));
        std::fs::write(&planted, b"not ours").unwrap();
        assert!(spool.append(vec![event(1)]).await.is_err());
        std::fs::remove_file(&planted).unwrap();
        spool.append(vec![event(2)]).await.unwrap();
        // Still sealed: an asked-for seal is written, and the close.
        spool.seal_now().await.unwrap();
        spool.close().await.unwrap();
        drop(spool);
        let kinds: Vec<SealKind> = segments(dir.path())
            .unwrap()
            .iter()
            .flat_map(|(number, _)| seals(dir.path(), *number))
            .map(|seal| seal.kind)
            .collect();
        assert_eq!(
            kinds,
            [SealKind::Open, SealKind::Seal, SealKind::Close],
            "{kinds:?}"
        );
        let report = verify(dir.path(), check(&keys, unix_now())).unwrap();
        assert!(matches!(report.end, End::Closed(_)), "{report:?}");
    }

    #[tokio::test]
    async fn a_shipped_position_must_be_a_record_of_this_chain() {
        use super::super::position::Position;
        use super::super::reading::position_holds;
        let (dir, sealer, _keys, _keydir) = fixture(Duration::from_secs(3600));
        let spool = Spool::open(dir.path(), 1 << 20, Some(sealer)).unwrap();
        spool.append(vec![event(0), event(1)]).await.unwrap();
        drop(spool);
        let at = |segment, offset, seq, head: Option<&str>| Position {
            segment,
            offset,
            seq,
            head: head.map(str::to_owned),
            last_event: None,
        };
        assert_eq!(position_holds(dir.path(), &at(0, 0, 0, None)), Ok(None));
        // "Nothing shipped" somewhere past the beginning: skips what lies before it.
        assert!(position_holds(dir.path(), &at(1, 900, 0, None)).is_err());
        // A record without its hash, or with another.
        assert!(position_holds(dir.path(), &at(1, 900, 2, None)).is_err());
        assert!(position_holds(dir.path(), &at(1, 900, 2, Some(&"0".repeat(64)))).is_err());
        let record = lines(dir.path(), 1)[2].clone();
        let held = position_holds(
            dir.path(),
            &at(1, 900, 2, Some(&sha256_hex(record.as_bytes()))),
        );
        assert_eq!(
            held,
            Ok(Some(sha256_hex(record.as_bytes()))),
            "event 0 is the last up to record 2"
        );
    }

    #[tokio::test]
    async fn the_shipped_position_beyond_the_end_is_a_cut() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, None).unwrap();
        for n in 0..3 {
            spool.append(vec![event(n)]).await.unwrap();
        }
        drop(spool);
        std::fs::write(
            dir.path().join("shipped.json"),
            r#"{"segment":1,"offset":9999,"seq":7}"#,
        )
        .unwrap();
        let broken = verify(dir.path(), Check::chain_only()).unwrap_err();
        assert!(
            broken.problem.contains("acknowledged records up to 7"),
            "{broken}"
        );
    }
}

#[tokio::test]
async fn the_shipper_reads_only_a_chain_that_continues_what_it_shipped() {
    use super::position::Position;
    use super::reading::{ReadError, Reading, read_batch};
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
    use super::position::Position;
    use super::reading::{ReadError, Reading, read_batch};
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
    let strangers = super::seal::SealKeys::load(&keydir.path().join("other.json")).unwrap();
    let error = read_batch(dir.path(), Position::default(), scan(&strangers))
        .err()
        .unwrap();
    assert!(matches!(error, ReadError::Broken(_)), "{error}");
}

#[tokio::test]
async fn a_sealed_spool_ships_only_what_a_seal_read_with_it_vouches_for() {
    use super::position::Position;
    use super::reading::{ReadError, Reading, read_batch};
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
    let many = super::spool::SEAL_EVERY_RECORDS as usize * 2 + 500;
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
            assert!(gap <= super::spool::SEAL_EVERY_RECORDS, "a gap of {gap}");
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

#[test]
fn a_seal_key_or_jwks_that_cannot_serve_is_a_config_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let config = |extra: &str| -> crate::config::AuditConfig {
        toml::from_str(&format!(
            "spool_dir = \"{}\"\n{extra}",
            dir.path().join("spool").display()
        ))
        .unwrap()
    };
    let field = |extra: &str| {
        super::Auditor::new(&config(extra), "https://gw", metrics.clone())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    std::fs::write(dir.path().join("not-a-key.pem"), "nonsense").unwrap();
    let missing = field("seal_key = \"/nonexistent/seal.key\"");
    assert!(missing.contains("audit.seal_key"), "{missing}");
    let bad = field(&format!(
        "seal_key = \"{}\"",
        dir.path().join("not-a-key.pem").display()
    ));
    assert!(bad.contains("audit.seal_key"), "{bad}");
    let alone = field("seal_jwks = \"/nonexistent/jwks.json\"");
    assert!(alone.contains("audit.seal_jwks"), "{alone}");
    // The seal key's kid given to another key in seal_jwks.
    let key = crate::auth::issuer_key::IssuerKey::generate("audit-seal-1").unwrap();
    let other = crate::auth::issuer_key::IssuerKey::generate("audit-seal-1").unwrap();
    std::fs::write(dir.path().join("seal.key"), key.pem()).unwrap();
    std::fs::write(dir.path().join("other.json"), other.jwks()).unwrap();
    let clash = field(&format!(
        "seal_key = \"{}\"\nseal_jwks = \"{}\"",
        dir.path().join("seal.key").display(),
        dir.path().join("other.json").display()
    ));
    assert!(
        clash.contains("audit.seal_jwks") && clash.contains("kid"),
        "{clash}"
    );
    assert_eq!(
        field(&format!(
            "seal_key = \"{}\"",
            dir.path().join("seal.key").display()
        )),
        "",
        "a good key is taken"
    );
}

#[tokio::test]
async fn links_and_fifos_planted_in_the_spool_are_not_followed() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    // The lock file a FIFO (opening it would hang), the next segment's staging file a link.
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.path().join("spool.lock"))
        .status()
        .unwrap();
    assert!(fifo.success());
    symlink(&victim, dir.path().join(format!("{}.new", segment_name(2)))).unwrap();
    let spool = Spool::open(dir.path(), 300, None).unwrap();
    for n in 0..8 {
        spool.append(vec![event(n)]).await.unwrap();
    }
    assert!(segments(dir.path()).unwrap().len() > 2);
    // The rollover staged its own file; the link's target is as it was.
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(
        dir.path()
            .join(segment_name(2))
            .symlink_metadata()
            .unwrap()
            .is_file(),
        "segment 2 is a file of its own"
    );
    drop(spool);
    // A link posing as a segment is no segment: the verifier sees a gap, and does not hang.
    std::fs::rename(
        dir.path().join(segment_name(2)),
        outside.path().join("moved"),
    )
    .unwrap();
    symlink(
        outside.path().join("moved"),
        dir.path().join(segment_name(2)),
    )
    .unwrap();
    let broken = verify(dir.path(), Check::chain_only()).unwrap_err();
    assert!(broken.problem.contains("missing"), "{broken}");
}
