//! A pack's trailer after decryption: JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::format::PackTrailer;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<PackTrailer>(data);
});
