//! A sealed spool proves itself complete: cut either end, rewrite the chain, or forge or
//! move a seal, and the verifier says so.
//! Test code only: nothing outside the audit tests may use it.

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
pub(super) fn keys(dir: &std::path::Path, kid: &str, every: Duration) -> (Arc<Sealer>, SealKeys) {
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
    let segment = lines(dir.path(), 1);
    let record = segment[2].clone();
    // The right record and hash, at a made-up place in the files: the place is read from
    // them (a shipper going on from 900, or pruning by it, would be going by a forged place).
    let held = position_holds(
        dir.path(),
        &at(1, 900, 2, Some(&sha256_hex(record.as_bytes()))),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        held.last_event,
        Some(sha256_hex(record.as_bytes())),
        "event 0 is the last up to record 2"
    );
    let end: usize = segment[..3].iter().map(|line| line.len() + 1).sum();
    assert_eq!((held.segment, held.offset, held.seq), (1, end as u64, 2));
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
