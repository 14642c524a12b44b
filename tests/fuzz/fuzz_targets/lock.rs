//! `locks/<hash>`: plain JSON, classified as live, stale or garbage.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::repository::lock_state;

fuzz_target!(|data: &[u8]| {
    let _ = lock_state(data, time::OffsetDateTime::now_utc());
});
