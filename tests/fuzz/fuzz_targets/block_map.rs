//! A block-map segment after decryption: binary; whatever decodes encodes back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::format::{decode_map, encode_map};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_map(data) {
        assert_eq!(encode_map(&m), data);
    }
});
