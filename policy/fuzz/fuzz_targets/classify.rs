//! Classification of arbitrary requests: method, path, query and body, split from the input at
//! newlines. It must never panic, and what it accepts must decide without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portvagt_policy::{ScopeSet, Subject, classify, decide};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let method = parts.next().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("GET");
    let path = parts.next().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or("");
    let query = parts.next().and_then(|p| std::str::from_utf8(p).ok());
    let body = parts.next().unwrap_or_default();
    let Ok(mut request) = classify(method, path, query) else { return };
    if request.needs_body() && request.attach_body(Some("application/fhir+json"), body).is_err() {
        return;
    }
    let scopes = ScopeSet::parse("patient/*.cruds user/Observation.rs system/Patient.cruds");
    let _ = decide(Subject { scopes: &scopes, patient: Some("pat-anne") }, &request);
});
