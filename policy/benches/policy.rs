//! Benchmarks of the per-request policy hot path: classification and the scope decision.

use criterion::{Criterion, criterion_group, criterion_main};
use portvagt_policy::{ScopeSet, Subject, classify, decide};
use std::hint::black_box;

fn classify_and_decide(c: &mut Criterion) {
    let scopes = ScopeSet::parse(
        "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs patient/Condition.rs \
         patient/Encounter.rs patient/MedicationRequest.rs",
    );
    c.bench_function("classify search with three params", |b| {
        b.iter(|| {
            classify(
                black_box("GET"),
                black_box("Observation"),
                black_box(Some(
                    "patient=pat-anne&code=http://loinc.org%7C4548-4&_count=50",
                )),
            )
        })
    });
    let request = classify(
        "GET",
        "Observation",
        Some("patient=pat-anne&code=http://loinc.org%7C4548-4&_count=50"),
    )
    .unwrap();
    c.bench_function("decide patient-pinned search", |b| {
        b.iter(|| {
            decide(
                black_box(Subject {
                    scopes: &scopes,
                    patient: Some("pat-anne"),
                }),
                black_box(&request),
            )
        })
    });
}

criterion_group!(benches, classify_and_decide);
criterion_main!(benches);
