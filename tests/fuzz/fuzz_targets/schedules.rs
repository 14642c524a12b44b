//! The `schedules` target: its body is `targets::schedules` (shared with the test suite's bounded run).
#![no_main]
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::schedules(data));
