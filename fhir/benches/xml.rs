//! FHIR XML at the edge: a searchset Bundle of 1, 10 and 100 Observations read from XML into
//! JSON (a client's XML body) and written from JSON as XML (an answer to a client that asked
//! for XML). Throughput is per entry, so the cost per entry reads straight off the report.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

fn searchset(entries: usize) -> Value {
    let entry: Vec<Value> = (0..entries)
        .map(|i| {
            json!({
                "fullUrl": format!("https://fhir.example.dk/fhir/Observation/obs-{i}"),
                "resource": {
                    "resourceType": "Observation", "id": format!("obs-{i}"),
                    "meta": { "versionId": "1", "lastUpdated": "2026-11-30T10:00:00Z" },
                    "status": "final",
                    "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
                    "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" }] },
                    "subject": { "reference": "Patient/pat-anne" },
                    "effectiveDateTime": "2026-11-30T09:58:00+01:00",
                    "valueQuantity": { "value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" }
                },
                "search": { "mode": "match" }
            })
        })
        .collect();
    json!({ "resourceType": "Bundle", "type": "searchset", "total": entries, "entry": entry })
}

fn conversions(c: &mut Criterion) {
    let mut group = c.benchmark_group("fhir_xml");
    for entries in [1usize, 10, 100] {
        let json = serde_json::to_vec(&searchset(entries)).unwrap();
        let xml = portvagt_fhir::json_to_xml(&json).unwrap();
        group.throughput(Throughput::Elements(entries as u64));
        group.bench_with_input(BenchmarkId::new("xml_to_json", entries), &xml, |b, xml| {
            b.iter(|| portvagt_fhir::xml_to_json(black_box(xml)).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("json_to_xml", entries),
            &json,
            |b, json| b.iter(|| portvagt_fhir::json_to_xml(black_box(json)).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, conversions);
criterion_main!(benches);
