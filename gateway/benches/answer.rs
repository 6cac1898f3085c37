//! Benchmarks of what the gateway does to a searchset answer on its way to the client: the
//! backend's URLs rewritten (and its paging links signed), read from the bytes or from a parsed
//! tree, for Bundles of 10, 100 and 1,000 Observations as a FHIR server sends them; beside
//! them the floor, one validating pass over the bytes; and, as the audit record needs them,
//! whose data the entries hold read after the rewrite or in its scan.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use portvagt::backend::rewrite::{Paging, UrlRewriter};
use serde_json::{Value, json};

// The gateway's allocator, as in `portvagt serve`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BACKEND: &str = "http://10.0.0.5:8080/fhir/R4";

fn searchset(entries: usize) -> Vec<u8> {
    let entry = |i: usize| {
        json!({
            "fullUrl": format!("{BACKEND}/Observation/obs-{i}"),
            "resource": {
                "resourceType": "Observation", "id": format!("obs-{i}"), "status": "final",
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }],
                "code": { "coding": [{ "system": "http://loinc.org", "code": "4548-4", "display": "Hemoglobin A1c" }] },
                "subject": { "reference": "Patient/pat-anne" },
                "performer": [{ "reference": "Practitioner/prac-ns363" }],
                "effectiveDateTime": "2026-03-01T08:00:00+01:00",
                "valueQuantity": { "value": 48, "unit": "mmol/mol", "system": "http://unitsofmeasure.org", "code": "mmol/mol" }
            },
            "search": { "mode": "match" }
        })
    };
    json!({ "resourceType": "Bundle", "type": "searchset", "total": entries,
            "link": [{ "relation": "self", "url": format!("{BACKEND}/Observation?patient=pat-anne") },
                     { "relation": "next", "url": format!("{BACKEND}?_getpages=abc&_getpagesoffset=10") }],
            "entry": (0..entries).map(entry).collect::<Vec<_>>() })
    .to_string()
    .into_bytes()
}

fn rewrite(c: &mut Criterion) {
    let rewriter = UrlRewriter::new(BACKEND, "https://fhir.example.dk/fhir");
    let link = |rest: &str| Some(format!("https://fhir.example.dk/fhir/_page/{rest}"));
    let paging = Paging {
        sign_self: false,
        link: &link,
    };
    let mut group = c.benchmark_group("searchset URLs rewritten");
    for size in [10, 100, 1000] {
        let body = searchset(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("parsed tree", size), &body, |b, body| {
            b.iter(|| {
                let mut tree: Value = serde_json::from_slice(black_box(body)).unwrap();
                rewriter.rewrite_bundle(&mut tree, Some(&paging));
                serde_json::to_vec(&tree).unwrap()
            })
        });
        // The floor: one validating pass over the bytes, nothing kept.
        group.bench_with_input(BenchmarkId::new("one pass", size), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("from the bytes", size),
            &body,
            |b, body| {
                b.iter(|| {
                    rewriter
                        .rewrite_bundle_bytes(black_box(body), Some(&paging), false)
                        .unwrap()
                })
            },
        );
    }
    group.finish();
    let mut group = c.benchmark_group("searchset URLs rewritten and patients read");
    for size in [10, 100, 1000] {
        let body = searchset(size);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("then read", size), &body, |b, body| {
            b.iter(|| {
                let out = rewriter
                    .rewrite_bundle_bytes(black_box(body), Some(&paging), false)
                    .unwrap()
                    .unwrap();
                portvagt_policy::compartment::patients_in_body(&out.bytes)
            })
        });
        group.bench_with_input(BenchmarkId::new("in one scan", size), &body, |b, body| {
            b.iter(|| {
                rewriter
                    .rewrite_bundle_bytes(black_box(body), Some(&paging), true)
                    .unwrap()
                    .unwrap()
                    .patients
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
