//! Benchmarks of the treatment-relationship check on the request path: the cached decision (a
//! professional's relationship with one patient looked up among 10,000 cached answers, then
//! decided), and, for a cache miss, judging a backend's answer of 40 candidate resources.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portvagt::config::{RelationshipConfig, RelationshipSource};
use portvagt::relationship::{Professional, Relationships};
use portvagt_policy::consent::{AUTHORIZATION_SYSTEM, CallerIds, Emergency};
use portvagt_policy::relationship::{Window, decide, evidence};
use serde_json::{Value, json};

fn caller(n: usize) -> CallerIds {
    CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), format!("NS{n:03}"))],
        references: vec![
            format!("Practitioner/prac-{n}"),
            format!("PractitionerRole/role-{n}"),
            "Organization/org-laegehuset".into(),
        ],
    }
}

fn cached_decision(c: &mut Criterion) {
    let relationships = Relationships::new(
        &RelationshipConfig {
            roles: vec!["7170".into()],
            source: RelationshipSource::Fhir,
            window: Duration::from_secs(90 * 86_400),
            ahead: Duration::from_secs(30 * 86_400),
            cache_ttl: Duration::from_secs(3600),
            negative_cache_ttl: Duration::from_secs(3600),
            cache_entries: 100_000,
            service: None,
        },
        Arc::new(portvagt::metrics::Metrics::new()),
    )
    .expect("relationships");
    // 100 professionals with 100 patients each, half of them related.
    for professional in 0..100 {
        let loaded: Vec<(String, Option<Arc<str>>)> = (0..100)
            .map(|patient| {
                let evidence = (patient % 2 == 0).then(|| Arc::from("EpisodeOfCare/eoc-1"));
                (format!("pat-{patient}"), evidence)
            })
            .collect();
        relationships.remember("default", &Professional::new(caller(professional)), &loaded);
    }
    let kjaer = Professional::new(caller(42));
    let patient = vec!["pat-42".to_owned()];
    c.bench_function(
        "relationship/cached decision, 1 patient of 10,000 cached",
        |b| {
            b.iter(|| {
                let (found, missing) = relationships.cached("default", &kjaer, black_box(&patient));
                assert!(missing.is_empty());
                let evidence = found.get("pat-42").cloned().flatten();
                black_box(decide(evidence.as_deref(), Emergency::None))
            });
        },
    );
}

fn evidence_in_an_answer(c: &mut Criterion) {
    let now = 1_796_083_200;
    let window = Window {
        past: 90 * 86_400,
        ahead: 30 * 86_400,
    };
    // 39 encounters of other professionals (newest first), then the one that counts.
    let mut resources: Vec<Value> = (0..39)
        .map(|n| {
            json!({ "resourceType": "Encounter", "id": format!("enc-{n}"), "status": "finished",
                "subject": { "reference": "Patient/pat-anne" },
                "participant": [{ "individual": { "reference": format!("Practitioner/prac-other-{n}") } }],
                "period": { "start": "2026-11-01T09:00:00Z", "end": "2026-11-01T09:30:00Z" } })
        })
        .collect();
    resources.push(
        json!({ "resourceType": "EpisodeOfCare", "id": "eoc-1", "status": "active",
        "patient": { "reference": "Patient/pat-anne" },
        "managingOrganization": { "reference": "Organization/org-laegehuset" },
        "period": { "start": "2019-04-01" } }),
    );
    let kjaer = caller(42);
    c.bench_function(
        "relationship/evidence among 40 resources (cache miss)",
        |b| {
            b.iter(|| {
                let found = evidence(black_box(&resources), "pat-anne", &kjaer, window, now);
                assert!(found.is_some());
                black_box(found)
            });
        },
    );
}

criterion_group!(benches, cached_decision, evidence_in_an_answer);
criterion_main!(benches);
