//! Real R4 resources survive JSON -> XML -> JSON unchanged: the testbed's Danish sample data,
//! and every example resource of the R4 specification (the `hl7.fhir.r4.examples` package,
//! installed into `testbed/fhir-examples` by `make backend`, which `make test` runs).

use std::path::{Path, PathBuf};

use portvagt_fhir::narrative_alike;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// JSON -> XML -> JSON; the JSON that comes back, or why not.
fn round_trip(json: &[u8]) -> Result<Value, String> {
    let xml = portvagt_fhir::json_to_xml(json).map_err(|e| format!("to XML: {e}"))?;
    let back = portvagt_fhir::xml_to_json(&xml).map_err(|e| {
        format!(
            "back from XML: {e}\n{}",
            String::from_utf8_lossy(&xml[..xml.len().min(2000)])
        )
    })?;
    serde_json::from_slice(&back).map_err(|e| format!("not JSON: {e}"))
}

#[test]
fn the_testbed_sample_data_round_trips() {
    let seed = std::fs::read(root().join("testbed/backend/seed/bundle.json")).unwrap();
    let original: Value = serde_json::from_slice(&seed).unwrap();
    assert_eq!(round_trip(&seed).unwrap(), original);
    let entries = original["entry"].as_array().unwrap();
    assert!(entries.len() > 10);
    for entry in entries {
        let resource = serde_json::to_vec(&entry["resource"]).unwrap();
        assert_eq!(round_trip(&resource).unwrap(), entry["resource"]);
    }
}

#[test]
fn every_r4_example_round_trips() {
    let dir = root().join("testbed/fhir-examples/node_modules/hl7.fhir.r4.examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; `make backend` installs the R4 examples",
                dir.display()
            )
        })
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .filter(|path| path.file_name().is_some_and(|n| n != "package.json"))
        .collect();
    files.sort();
    assert!(files.len() > 5000, "{} examples", files.len());
    // Two halves on two threads: 5,300 resources, some of them large.
    let (first, second) = files.split_at(files.len() / 2);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let other = scope.spawn(|| failed(second));
        let mut failures = failed(first);
        failures.extend(other.join().unwrap());
        failures
    });
    assert!(
        failures.is_empty(),
        "{} of {} examples:\n{}",
        failures.len(),
        files.len(),
        failures[..failures.len().min(200)].join("\n")
    );
}

/// Where two JSON values first differ.
fn first_difference(at: &str, a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) if u == v => {}
                    (Some(u), Some(v)) => return first_difference(&format!("{at}/{key}"), u, v),
                    (u, v) => return format!("{at}/{key}: {u:?} / {v:?}"),
                }
            }
            String::new()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (u, v))| u != v)
            .map(|(i, (u, v))| first_difference(&format!("{at}/{i}"), u, v))
            .unwrap_or_default(),
        _ => format!("{at}: {a} / {b}"),
    }
}
/// The examples among `files` that do not come back as they went.
fn failed(files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(path).unwrap();
        let original: Value = serde_json::from_slice(&bytes).unwrap();
        match round_trip(&bytes) {
            Ok(back) if narrative_alike(&back) == narrative_alike(&original) => {}
            Ok(back) => failures.push(format!(
                "{}: differs at {}",
                path.display(),
                first_difference("", &narrative_alike(&original), &narrative_alike(&back))
            )),
            Err(error) => failures.push(format!("{}: {error}", path.display())),
        }
    }
    failures
}
