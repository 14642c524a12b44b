//! Any sealed object as read from the store (nonce, ciphertext, tag, compression), opened
//! with a fixed key under every role: refused or opened, never a panic or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::crypto::{Keys, Role};
use lifeboat::format::{BlobId, BlobKind};

fuzz_target!(|data: &[u8]| {
    let keys = Keys::from_master([7u8; 64]);
    let roles = [
        Role::PackTrailer,
        Role::Index,
        Role::Snapshot,
        Role::Backup,
        Role::Blob(BlobKind::Data, BlobId([1u8; 32])),
    ];
    for role in roles {
        let _ = keys.open(role, data, 1 << 20);
    }
    // And what sealing writes opens again.
    let sealed = keys.seal(Role::Index, data, 3);
    assert_eq!(
        keys.open(Role::Index, &sealed, data.len().max(1) << 1)
            .unwrap(),
        data
    );
});
