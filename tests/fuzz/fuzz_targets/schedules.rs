//! A schedule file (YAML, several documents); a loaded config also answers its fire times.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let files = [("fuzz.yaml".to_string(), text.to_string())];
        let _ = lifeboat::scheduler::config::parse_config(&files);
    }
});
