//! The `pack_trailer` target: its body is `targets::pack_trailer` (shared with the test suite's bounded run).
#![no_main]
#[allow(dead_code)]
#[path = "../targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::pack_trailer(data));
