#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portvagt_fuzz::fhir_xml(data));
