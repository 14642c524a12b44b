//! `keys/<id>`: plain JSON; then the unwrap with the parameters it names (bounded here so the
//! target tests the parser, not Argon2's cost; key files are not bounded yet: see README).
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::crypto::{Keys, Wrapped};
use lifeboat::format::KeyFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = serde_json::from_slice::<KeyFile>(data) {
        if k.kdf.memory_kib <= 1024 && k.kdf.iterations <= 2 && k.kdf.parallelism <= 4 {
            let w = Wrapped {
                salt: k.salt,
                nonce: k.nonce,
                wrapped: k.wrapped,
            };
            let _ = Keys::unwrap(b"fixture", k.kdf, &w);
        }
    }
});
