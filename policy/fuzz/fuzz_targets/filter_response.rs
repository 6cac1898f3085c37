//! Response filtering over arbitrary bytes: never a panic, and a rewritten answer is JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portvagt_policy::{FilterMode, Filtered, filter_response};

fuzz_target!(|data: &[u8]| {
    for mode in [FilterMode::Remove, FilterMode::Deny] {
        if let Filtered::Rewritten(bytes) = filter_response(data, "pat-anne", mode) {
            assert!(serde_json_is_valid(&bytes));
        }
    }
});

fn serde_json_is_valid(bytes: &[u8]) -> bool {
    // The policy crate re-exports no JSON parser; a rewritten body must at least be UTF-8 and
    // start like a JSON object.
    std::str::from_utf8(bytes).is_ok_and(|text| text.starts_with('{') && text.ends_with('}'))
}
