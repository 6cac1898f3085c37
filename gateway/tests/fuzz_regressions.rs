//! Replays the fuzz targets' committed inputs (`fuzz/seeds/<target>/`, and every input that
//! once crashed a target, kept in `fuzz/regressions/<target>/`) through the same checks the
//! fuzzer runs (`fuzz/src/targets.rs`), so a crash that was fixed stays fixed. The fuzzing
//! itself is `fuzz/run.sh`, on demand.

#[allow(dead_code, unreachable_pub, clippy::all)]
mod targets {
    include!("../../fuzz/src/targets.rs");
}

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for folder in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(folder).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            check(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs for {target}");
}

#[test]
fn classify() {
    replay("classify", targets::classify);
}

#[test]
fn scope() {
    replay("scope", targets::scope);
}

#[test]
fn jwt() {
    replay("jwt", targets::jwt);
}

#[test]
fn saml() {
    replay("saml", targets::saml);
}

#[test]
fn response_filter() {
    replay("response_filter", targets::response_filter);
}

#[test]
fn config() {
    replay("config", targets::config);
}

#[test]
fn fhir_xml() {
    replay("fhir_xml", targets::fhir_xml);
}
