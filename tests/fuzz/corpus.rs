//! The seed corpus of every target, from the fixture repository `fixtures/repos/good`
//! (password `fixture`): the plain objects as they are, the sealed ones decrypted, so the
//! targets of the decoders behind the encryption start from real objects; and the rules,
//! schedules, changed-ranges file and cluster manifests of `fixtures/`. Shared by the
//! `seeds` binary (`seeds.rs`, writes it for cargo-fuzz) and the suite's bounded run.

use std::fs;
use std::path::{Path, PathBuf};

use lifeboat::crypto::{Keys, Role};
use lifeboat::format::{BlobKind, IndexFile, KeyFile, Snapshot, PACK_MAGIC};

/// One seed input of one target.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The seed corpus built from `fixtures`: (target, name, bytes).
pub fn seeds(fixtures: &Path) -> Vec<Seed> {
    let mut out = Vec::new();
    let mut put = |target: &'static str, name: &str, bytes: &[u8]| {
        out.push(Seed {
            target,
            name: name.to_string(),
            bytes: bytes.to_vec(),
        })
    };
    let repo = fixtures.join("repos/good");
    put("config", "good", &fs::read(repo.join("config")).unwrap());
    let mut keys = None;
    for k in files(&repo.join("keys")) {
        let bytes = fs::read(&k).unwrap();
        put("key_file", "good", &bytes);
        let kf: KeyFile = serde_json::from_slice(&bytes).unwrap();
        let w = lifeboat::crypto::Wrapped {
            salt: kf.salt,
            nonce: kf.nonce,
            wrapped: kf.wrapped,
        };
        keys = Some(Keys::unwrap(b"fixture", kf.kdf, &w).unwrap());
    }
    let keys = keys.expect("a key");
    let open = |role, p: &Path| keys.open(role, &fs::read(p).unwrap(), 64 << 20).unwrap();
    let mut index = Vec::new();
    for (i, p) in files(&repo.join("index")).iter().enumerate() {
        let plain = open(Role::Index, p);
        put("index", &format!("good{i}"), &plain);
        index.push(serde_json::from_slice::<IndexFile>(&plain).unwrap());
        put("sealed", &format!("index{i}"), &fs::read(p).unwrap());
    }
    for (i, p) in files(&repo.join("snapshots")).iter().enumerate() {
        let plain = open(Role::Snapshot, p);
        put("snapshot", &format!("good{i}"), &plain);
        let snap: Snapshot = serde_json::from_slice(&plain).unwrap();
        // Its block-map segments, from the packs the index names.
        for (j, seg) in snap.map.iter().enumerate() {
            for f in &index {
                for pack in &f.packs {
                    for b in pack.blobs.iter().filter(|b| b.id == *seg) {
                        let hex = pack.id.key();
                        let data = fs::read(repo.join(&hex)).unwrap();
                        let s = &data[b.offset as usize..(b.offset + b.length as u64) as usize];
                        let m = keys.open_blob(BlobKind::Map, seg, s, b.raw_length as usize);
                        put("block_map", &format!("good{i}-{j}"), &m.unwrap());
                    }
                }
            }
        }
    }
    for (i, p) in files(&repo.join("data")).iter().enumerate() {
        let data = fs::read(p).unwrap();
        let n = data.len();
        if n < 12 || &data[n - 8..] != PACK_MAGIC {
            continue;
        }
        let tlen = u32::from_le_bytes(data[n - 12..n - 8].try_into().unwrap()) as usize;
        let plain = keys.open(Role::PackTrailer, &data[n - 12 - tlen..n - 12], 64 << 20);
        put("pack_trailer", &format!("good{i}"), &plain.unwrap());
    }
    put(
        "changed_ranges",
        "fixture",
        &fs::read(fixtures.join("changed-ranges.json")).unwrap(),
    );
    // Plain objects no fixture repository holds: an application backup record (decrypted)
    // and a lock.
    let objects = fixtures.join("objects");
    put(
        "backup_record",
        "backup-record",
        &fs::read(objects.join("backup-record.json")).unwrap(),
    );
    put(
        "lock",
        "lock",
        &fs::read(objects.join("lock.json")).unwrap(),
    );
    for p in files(&fixtures.join("rules")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        put("rules", &name, &fs::read(&p).unwrap());
    }
    for p in files(&fixtures.join("schedules")) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        put("schedules", &name, &fs::read(&p).unwrap());
    }
    for (i, p) in files(&fixtures.join("clusters")).iter().enumerate() {
        if p.extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            put("manifests", &format!("{i}"), &fs::read(p).unwrap());
        }
    }
    out
}
