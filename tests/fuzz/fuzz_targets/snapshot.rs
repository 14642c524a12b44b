//! `snapshots/<id>` after decryption: JSON, then what every reader computes from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::format::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = serde_json::from_slice::<Snapshot>(data) {
        let _ = s.blocks();
    }
});
