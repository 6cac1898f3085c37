//! The spool and its verifier: the chain holds across group commits, segments and restarts; a
//! crash's unfinished record is cut off; any change to a written record is found.

use std::io::Write as _;

use serde_json::json;

use super::spool::{Spool, segment_name};
use super::verify::verify;

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
    let spool = Spool::open(dir.path(), 64 * 1024 * 1024).unwrap();
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
    let report = verify(dir.path()).unwrap();
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
        let spool = Spool::open(dir.path(), 300).unwrap();
        for n in 0..10 {
            spool.append(vec![event(n)]).await.unwrap();
        }
    }
    let spool = Spool::open(dir.path(), 300).unwrap();
    let seq = spool.append(vec![event(10)]).await.unwrap();
    assert_eq!(seq, 11);
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.records, 11);
    assert!(report.segments > 2, "{report:?}");
}

#[tokio::test]
async fn a_record_cut_short_by_a_crash_is_dropped_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
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
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.records, 3);
    assert!(report.unfinished_tail.is_some());

    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(spool.append(vec![event(3)]).await.unwrap(), 4);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.unfinished_tail), (4, None));
}

#[tokio::test]
async fn altered_removed_and_reordered_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
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
    let broken = verify(dir.path()).unwrap_err();
    assert_eq!(
        broken.line, 5,
        "the record after the altered one no longer follows: {broken}"
    );

    let mut removed = original.clone();
    removed.remove(2);
    write(&removed);
    let broken = verify(dir.path()).unwrap_err();
    assert_eq!(broken.line, 3, "{broken}");

    let mut swapped = original.clone();
    swapped.swap(2, 3);
    write(&swapped);
    assert_eq!(verify(dir.path()).unwrap_err().line, 3);

    // The last record altered: nothing follows it to break, but the chain head differs, which
    // is what a head kept elsewhere (the shipped copy) is compared with.
    let mut last = original.clone();
    last[5] = last[5].replace("\"n\":4", "\"n\":9");
    write(&last);
    let report = verify(dir.path()).unwrap();
    assert_ne!(report.head, {
        write(&original);
        verify(dir.path()).unwrap().head
    });

    write(&original);
    assert_eq!(verify(dir.path()).unwrap().records, 5);
}

#[tokio::test]
async fn one_spool_has_one_writer_and_a_half_made_segment_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    spool.append(vec![event(0)]).await.unwrap();
    let second = Spool::open(dir.path(), 1 << 20).unwrap_err();
    assert!(second.to_string().contains("another process"), "{second}");
    drop(spool);
    // A crash while the next segment was being staged leaves only its staging file.
    let staged = dir.path().join(format!("{}.new", segment_name(2)));
    std::fs::write(&staged, b"{\"segment\":2").unwrap();
    let spool = Spool::open(dir.path(), 1 << 20).unwrap();
    assert!(!staged.exists());
    assert_eq!(spool.append(vec![event(1)]).await.unwrap(), 2);
    assert_eq!(verify(dir.path()).unwrap().records, 2);
}

#[tokio::test]
async fn shipped_segments_go_when_old_enough_and_the_rest_still_verifies_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = Spool::open(dir.path(), 300).unwrap();
        for n in 0..10 {
            spool.append(vec![event(n)]).await.unwrap();
        }
    }
    let before = super::spool::segments(dir.path()).unwrap();
    assert!(before.len() > 3, "{before:?}");
    let shipped_to = before[3].0;
    let keep = |d| super::shipper::delete_shipped(dir.path(), shipped_to, d).unwrap();

    // Not old enough: nothing goes.
    assert_eq!(keep(std::time::Duration::from_secs(3600)), 0);
    assert_eq!(super::spool::segments(dir.path()).unwrap(), before);

    // Old enough: only what the repository acknowledged in full goes.
    assert_eq!(keep(std::time::Duration::ZERO), 3);
    let after = super::spool::segments(dir.path()).unwrap();
    assert_eq!(after, before[3..].to_vec());
    let report = verify(dir.path()).unwrap();
    assert_eq!(report.segments, before.len() as u64 - 3);
    assert!(report.records < 10, "{report:?}");
    let head = report.head;

    // The writer goes on after the deletion, and the chain with it.
    let spool = Spool::open(dir.path(), 300).unwrap();
    assert_eq!(spool.append(vec![event(10)]).await.unwrap(), 11);
    drop(spool);
    let report = verify(dir.path()).unwrap();
    assert_ne!(report.head, head);

    // A segment in the middle removed by hand is still found.
    let middle = super::spool::segments(dir.path()).unwrap()[1].1.clone();
    std::fs::remove_file(middle).unwrap();
    assert!(verify(dir.path()).unwrap_err().problem.contains("missing"));
}
