//! Benchmarks of the per-request policy hot path: classification plus decision for typical
//! requests, response filtering of searchset Bundles of 10, 100 and 1000 entries, and finding
//! the patients of such an answer for its audit record (from a parsed tree, and from the bytes),
//! and the reach and consent decision of a single-patient read (target: under 2 µs together).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use portvagt_policy::compartment::{patients_in_answer, patients_in_body};
use portvagt_policy::{FilterMode, ScopeSet, Subject, classify, decide, filter_response};
use serde_json::json;

// The gateway's allocator: what these cost in `portvagt serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PATIENT_SCOPES: &str = "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs \
     patient/Condition.rs patient/Encounter.rs patient/MedicationRequest.rs";
const USER_SCOPES: &str =
    "openid fhirUser user/Patient.rs user/Observation.cruds user/Condition.rs user/Encounter.rs";

fn classify_and_decide(c: &mut Criterion) {
    let patient_scopes = ScopeSet::parse(PATIENT_SCOPES);
    let user_scopes = ScopeSet::parse(USER_SCOPES);
    // (name, scopes, patient claim, method, path, query)
    type Case<'a> = (
        &'a str,
        &'a ScopeSet,
        Option<&'a str>,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: [Case<'_>; 5] = [
        (
            "patient read",
            &patient_scopes,
            Some("pat-anne"),
            "GET",
            "Observation/obs-anne-bp",
            None,
        ),
        (
            "patient pinned search",
            &patient_scopes,
            Some("pat-anne"),
            "GET",
            "Observation",
            Some("patient=pat-anne&code=http://loinc.org%7C4548-4&_count=50"),
        ),
        (
            "patient narrowed search",
            &patient_scopes,
            Some("pat-anne"),
            "GET",
            "Observation",
            Some("code=http://loinc.org%7C4548-4"),
        ),
        (
            "user read",
            &user_scopes,
            None,
            "GET",
            "Patient/pat-bo",
            None,
        ),
        (
            "user search",
            &user_scopes,
            None,
            "GET",
            "Observation",
            Some("patient=pat-bo&date=ge2024-01-01&_sort=-date"),
        ),
    ];
    let mut group = c.benchmark_group("classify+decide");
    for (name, scopes, patient, method, path, query) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let request = classify(black_box(method), black_box(path), black_box(query))
                    .expect("valid request");
                decide(Subject::new(scopes, patient), &request)
            })
        });
    }
    group.finish();
}

fn searchset(entries: usize) -> Vec<u8> {
    let entry = |i: usize| {
        let patient = if i % 10 == 9 { "pat-bo" } else { "pat-anne" };
        json!({
            "fullUrl": format!("https://fhir.example.dk/fhir/Observation/obs-{i}"),
            "resource": {
                "resourceType": "Observation", "id": format!("obs-{i}"), "status": "final",
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }],
                "code": { "coding": [{ "system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c" }] },
                "subject": { "reference": format!("Patient/{patient}") },
                "performer": [{ "reference": "Practitioner/prac-ns363" }],
                "effectiveDateTime": "2026-03-01T08:00:00+01:00",
                "valueQuantity": { "value": 48, "unit": "mmol/mol", "system": "http://unitsofmeasure.org", "code": "mmol/mol" }
            },
            "search": { "mode": "match" }
        })
    };
    json!({ "resourceType": "Bundle", "type": "searchset", "total": entries,
            "link": [{ "relation": "self", "url": "https://fhir.example.dk/fhir/Observation" }],
            "entry": (0..entries).map(entry).collect::<Vec<_>>() })
    .to_string()
    .into_bytes()
}

fn response_filtering(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter searchset (1 in 10 entries removed)");
    for size in [10, 100, 1000] {
        let body = searchset(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| filter_response(black_box(body), "pat-anne", FilterMode::Remove))
        });
    }
    group.finish();
}

fn patients_of_answers(c: &mut Criterion) {
    let mut group = c.benchmark_group("patients of a searchset");
    for size in [10, 100, 1000] {
        let body = searchset(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("parsed tree", size), &body, |b, body| {
            b.iter(|| {
                let answer: serde_json::Value = serde_json::from_slice(black_box(body)).unwrap();
                patients_in_answer(&answer)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("from the bytes", size),
            &body,
            |b, body| b.iter(|| patients_in_body(black_box(body))),
        );
    }
    group.finish();
}

/// What consent adds to a single-patient read: its reach, and the patient's Consent decided for
/// a caller it names (the blocks come from the gateway's cache).
fn reach_and_consent(c: &mut Criterion) {
    use std::collections::HashMap;
    use std::sync::Arc;

    use portvagt_policy::Reach;
    use portvagt_policy::consent::{
        AUTHORIZATION_SYSTEM, Access, CallerIds, Emergency, blocks_in, check_patients,
    };

    let read = classify("GET", "Patient/pat-anne", None).unwrap();
    let search = classify(
        "GET",
        "Observation",
        Some("subject=https%3A%2F%2Fx.example%2FPatient%2Fpat-anne,pat-bo&code=4548-4"),
    )
    .unwrap();
    let consent = json!({ "resourceType": "Consent", "id": "c1", "status": "active",
        "patient": { "reference": "Patient/pat-anne" },
        "provision": { "type": "deny", "actor": [{ "reference": { "identifier": {
            "system": AUTHORIZATION_SYSTEM, "value": "ZK482" } } }],
            "provision": [{ "type": "permit", "class": [{ "code": "Patient" }] }] } });
    let mut blocks = HashMap::new();
    blocks.insert(
        "pat-anne".to_owned(),
        Arc::new(vec![blocks_in(&consent).unwrap()]),
    );
    let caller = CallerIds {
        identifiers: vec![
            (AUTHORIZATION_SYSTEM.into(), "NS363".into()),
            ("http://cvr.dk".into(), "12345678".into()),
        ],
        references: vec!["Practitioner/prac-ns363".into()],
    };
    let mut group = c.benchmark_group("consent");
    group.bench_function("reach of a read", |b| {
        b.iter(|| Reach::of(black_box(&read)))
    });
    group.bench_function("reach of a search in three spellings", |b| {
        b.iter(|| Reach::of(black_box(&search)))
    });
    group.bench_function("reach and decision of a read", |b| {
        b.iter(|| {
            let reach = Reach::of(black_box(&read));
            let access = Access {
                resource_type: Some("Patient"),
                resource: Some("Patient/pat-anne"),
                purpose: Some("TREATMENT"),
                now: 1_796_299_200,
                unknown_denies: false,
            };
            check_patients(reach.patients(), &blocks, &caller, &access, Emergency::None)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    classify_and_decide,
    response_filtering,
    patients_of_answers,
    reach_and_consent
);
criterion_main!(benches);
