//! The fuzz targets' bodies, one function per parser of untrusted input. Shared by the
//! cargo-fuzz binaries of `fuzz_targets/` (coverage-guided, on demand: `run.sh`) and by the
//! bounded run in the test suite (`tests/it/fuzz.rs`, mutations of the seed corpus).
//! A body may refuse its input; it must not panic, hang or allocate without bound.

use lifeboat::crypto::{Keys, Role, Wrapped};
use lifeboat::format::{
    decode_map, encode_map, AppBackup, BlobId, BlobKind, IndexFile, KeyFile, PackTrailer,
    RepoConfig, Snapshot,
};
use lifeboat::repository::Index;

/// A target's body: takes one input, refuses it or accepts it, never panics.
pub type Body = fn(&[u8]);

/// Every target by name (the names of `fuzz_targets/*.rs` and of the corpus folders).
pub const TARGETS: &[(&str, Body)] = &[
    ("backup_record", backup_record),
    ("block_map", block_map),
    ("changed_ranges", changed_ranges),
    ("config", config),
    ("index", index),
    ("key_file", key_file),
    ("lock", lock),
    ("manifests", manifests),
    ("pack_trailer", pack_trailer),
    ("rules", rules),
    ("schedules", schedules),
    ("sealed", sealed),
    ("snapshot", snapshot),
];

/// `backups/<id>` after decryption: JSON.
pub fn backup_record(data: &[u8]) {
    let _ = serde_json::from_slice::<AppBackup>(data);
}

/// A block-map segment after decryption: binary; whatever decodes encodes back the same.
pub fn block_map(data: &[u8]) {
    if let Ok(m) = decode_map(data) {
        assert_eq!(encode_map(&m), data);
    }
}

/// A `--changed-ranges` file.
pub fn changed_ranges(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lifeboat::volume::diff::parse_ranges("fuzz.json", text);
    }
}

/// `config`: plain JSON, read before any key is known.
pub fn config(data: &[u8]) {
    if let Ok(c) = serde_json::from_slice::<RepoConfig>(data) {
        let _ = c.mac_input();
    }
}

/// `index/<hash>` after decryption: JSON, then the in-memory index built from it.
pub fn index(data: &[u8]) {
    if let Ok(f) = serde_json::from_slice::<IndexFile>(data) {
        let idx = Index::from_files(vec![f.clone(), f]);
        for (id, loc) in idx.iter() {
            assert_eq!(idx.get(id), Some(*loc));
            let _ = idx.pack_id(loc.pack);
        }
    }
}

/// `keys/<id>`: plain JSON; then the unwrap with the parameters it names (bounded here so the
/// target tests the parser, not Argon2's cost; the reader bounds them too).
pub fn key_file(data: &[u8]) {
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
}

/// `locks/<hash>`: plain JSON, classified as live, stale or garbage.
pub fn lock(data: &[u8]) {
    let _ = lifeboat::repository::lock_state(data, time::OffsetDateTime::now_utc());
}

/// A cluster directory's manifest file (YAML, several documents, `kind: List`).
pub fn manifests(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lifeboat::k8s::source::parse_documents("fuzz.yaml", text);
    }
}

/// A pack's trailer after decryption: JSON.
pub fn pack_trailer(data: &[u8]) {
    let _ = serde_json::from_slice::<PackTrailer>(data);
}

/// A rule file (YAML, several documents).
pub fn rules(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lifeboat::hooks::rules::parse_rules("fuzz.yaml", text);
    }
}

/// A schedule file (YAML, several documents); a loaded config also answers its fire times.
pub fn schedules(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let files = [("fuzz.yaml".to_string(), text.to_string())];
        let _ = lifeboat::scheduler::config::parse_config(&files);
    }
}

/// Any sealed object as read from the store (nonce, ciphertext, tag, compression), opened
/// with a fixed key under every role: refused or opened, never a panic or a huge allocation.
pub fn sealed(data: &[u8]) {
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
}

/// `snapshots/<id>` after decryption: JSON, then what every reader computes from it.
pub fn snapshot(data: &[u8]) {
    if let Ok(s) = serde_json::from_slice::<Snapshot>(data) {
        let _ = s.blocks();
    }
}
