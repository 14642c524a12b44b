//! A rule file (YAML, several documents).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lifeboat::hooks::rules::parse_rules("fuzz.yaml", text);
    }
});
