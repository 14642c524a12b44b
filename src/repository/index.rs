//! The in-memory index: which pack holds each blob. Built from the index objects; pure.

use std::collections::HashMap;

use crate::format::{BlobId, BlobKind, IndexFile, PackId};

/// Where one blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub kind: BlobKind,
}

/// Immutable once built. Blobs are kept in one sorted array (56 bytes a blob, found by binary
/// search) rather than a hash table, which would take about twice that at the same size.
#[derive(Debug, Default, Clone)]
pub struct Index {
    packs: Vec<(PackId, u64)>,
    blobs: Vec<(BlobId, BlobLocation)>,
}

impl Index {
    pub fn from_files(files: Vec<IndexFile>) -> Index {
        let mut pack_pos: HashMap<PackId, u32> = HashMap::new();
        let mut idx = Index::default();
        for f in files {
            for p in f.packs {
                let pos = *pack_pos.entry(p.id).or_insert_with(|| {
                    idx.packs.push((p.id, p.size));
                    (idx.packs.len() - 1) as u32
                });
                idx.blobs.extend(p.blobs.iter().map(|b| {
                    (
                        b.id,
                        BlobLocation {
                            pack: pos,
                            offset: b.offset,
                            length: b.length,
                            raw_length: b.raw_length,
                            kind: b.kind,
                        },
                    )
                }));
            }
        }
        // A blob stored in several packs (two backups racing, a repack) keeps one location;
        // any of them holds the same verified bytes.
        idx.blobs.sort_unstable_by_key(|(id, _)| *id);
        idx.blobs.dedup_by(|a, b| a.0 == b.0);
        idx.blobs.shrink_to_fit();
        idx
    }

    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs
            .binary_search_by(|(b, _)| b.cmp(id))
            .ok()
            .map(|i| self.blobs[i].1)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.binary_search_by(|(b, _)| b.cmp(id)).is_ok()
    }

    pub fn pack_id(&self, pos: u32) -> PackId {
        self.packs[pos as usize].0
    }

    /// Every indexed pack with its size.
    pub fn packs(&self) -> &[(PackId, u64)] {
        &self.packs
    }

    /// Every indexed blob with its location.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, &BlobLocation)> {
        self.blobs.iter().map(|(id, loc)| (id, loc))
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{IndexPack, PackedBlob};
    use proptest::prelude::*;

    fn id(n: u16) -> BlobId {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&n.to_be_bytes());
        b[31] = 1;
        BlobId(b)
    }

    proptest! {
        #[test]
        fn every_indexed_blob_is_found_and_no_other(
            packs in prop::collection::vec(prop::collection::vec(0u16..500, 0..30), 0..8),
            probes in prop::collection::vec(0u16..1000, 0..50),
        ) {
            let files = vec![IndexFile {
                version: 1,
                packs: packs.iter().enumerate().map(|(p, blobs)| IndexPack {
                    id: PackId([p as u8; 32]),
                    size: 1000,
                    blobs: blobs.iter().enumerate().map(|(i, n)| PackedBlob {
                        id: id(*n), kind: BlobKind::Data, offset: i as u64 * 10, length: 10, raw_length: 10,
                    }).collect(),
                }).collect(),
            }];
            let idx = Index::from_files(files);
            let all: std::collections::HashSet<u16> = packs.iter().flatten().copied().collect();
            prop_assert_eq!(idx.blob_count(), all.len());
            for n in probes.iter().chain(all.iter()) {
                let found = idx.get(&id(*n));
                prop_assert_eq!(found.is_some(), all.contains(n));
                prop_assert_eq!(idx.contains(&id(*n)), all.contains(n));
                if let Some(loc) = found {
                    // The location names a pack that really lists this blob at that offset.
                    let pack = &packs[loc.pack as usize];
                    prop_assert_eq!(pack[(loc.offset / 10) as usize], *n);
                }
            }
        }
    }
}
