//! The `changed_ranges` target: its body is `targets::changed_ranges` (shared with the test suite's bounded run).
#![no_main]
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::changed_ranges(data));
