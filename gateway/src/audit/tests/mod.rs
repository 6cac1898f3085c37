//! The spool and its verifier: the chain holds across group commits, segments and restarts; a
//! crash's unfinished record is cut off; any change to a written record is found.
//! The sealed chain and what the shipper reads are tested in `sealed` and `reading`. Test code
//! only: nothing outside the audit tests may use it.

mod reading;
mod sealed;

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

/// What one request can cost the spool: an answer about `max_patients_per_request` (1,000 by
/// default) patients is that many events; each, for a named physician with her organisation
/// and a search's query, is about 3.3 KB (under 4 KiB), so such a request writes under 4 MiB.
/// The figure the README gives.
#[test]
fn one_request_about_a_thousand_patients_costs_the_spool_under_four_mebibytes() {
    use std::sync::Arc;

    use crate::audit::event::{AccessFacts, AccessKind, AuditSource, audit_events};
    use crate::auth::Principal;
    use crate::auth::principal::{Identity, Organisation};

    let pki = portvagt_certs::DevPki::generate().unwrap();
    let peer =
        Arc::new(crate::tls::PeerIdentity::from_verified_leaf(&pki.client.cert_der).unwrap());
    let principal = Principal {
        subject: "mette.kjaer@region-demo.dk".into(),
        issuer: "https://auth.region-demo.dk/realms/sundhed".into(),
        client_id: Some("journalsystem-demo".into()),
        jti: Some(uuid::Uuid::new_v4().to_string()),
        scopes: portvagt_policy::ScopeSet::parse("user/*.rs"),
        patient: None,
        fhir_user: Some("Practitioner/prac-ns363".into()),
        certificate_bound: true,
        expires_at: u64::MAX,
        roles: vec!["7170".into()],
        purpose_of_use: Some("TREATMENT".into()),
        audiences: Vec::new(),
        identity: Identity {
            name: Some("Mette Kjær".into()),
            cpr: Some("0501792275".into()),
            authorization_id: Some("NS363".into()),
            organisation: Some(Organisation {
                kind: "medcom:sor".into(),
                id: "123456789012345".into(),
                name: Some("Region Demo Sundhed, Medicinsk afdeling".into()),
            }),
            on_behalf_of: None,
            system_name: Some("Journalsystem Demo".into()),
            break_glass_reason: None,
        },
        peer: peer.clone(),
    };
    let patients: Vec<String> = (0..1000)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let request_id = uuid::Uuid::new_v4().to_string();
    let facts = AccessFacts {
        request_id: &request_id,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        recorded: time::OffsetDateTime::now_utc(),
        method: "GET",
        target: "/fhir/Patient?organization=Organization/org-demo&birthdate=ge1950-01-01&_count=1000",
        kind: AccessKind::Fhir(None),
        status: 200,
        reason: None,
        principal: Some(&principal),
        peer: Some(&peer),
        client_ip: Some("10.20.30.40".parse().unwrap()),
        patients: &patients,
        break_glass: None,
        bases: &[],
        citizen_block: None,
    };
    let source = AuditSource {
        observer: "portvagt@gateway-7c9f8d6b5-x2x9q".into(),
        site: "https://fhir.region-demo.dk/fhir".into(),
    };
    let events = audit_events(&facts, &source);
    assert_eq!(events.len(), 1000);
    let total: usize = events.iter().map(Vec::len).sum();
    println!("1000 events: {total} bytes, {} per event", total / 1000);
    assert!(total / 1000 < 4096, "{} bytes per event", total / 1000);
    assert!(total < 4 * 1024 * 1024, "{total} bytes");
}
