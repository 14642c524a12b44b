//! `index/<hash>` after decryption: JSON, then the in-memory index built from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lifeboat::format::IndexFile;
use lifeboat::repository::Index;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = serde_json::from_slice::<IndexFile>(data) {
        let idx = Index::from_files(vec![f.clone(), f]);
        for (id, loc) in idx.iter() {
            assert_eq!(idx.get(id), Some(*loc));
            let _ = idx.pack_id(loc.pack);
        }
    }
});
