//! `config`: plain JSON, read before any key is known.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::format::RepoConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<RepoConfig>(data) {
        let _ = c.mac_input();
    }
});
