//! A cluster directory's manifest file (YAML, several documents, `kind: List`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lifeboat::k8s::source::parse_documents("fuzz.yaml", text);
    }
});
